"""Example schemas: the EDMS document-management system nkdaemon was born in."""
