"""The chat layer: requests in the service's own types, prompts via chat templates, results assembled."""
