"""GENERATED PACKAGE: `python -m chatgen.protogen` writes these modules from protos/chatgen/v1/chatgen.proto.

Do not edit by hand; tests/unit/test_protogen.py fails when they drift from the .proto.
"""
