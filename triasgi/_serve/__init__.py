"""The trio serving layer: the only code with sockets, nurseries and cancel scopes.

See docs/architecture.md.
"""
