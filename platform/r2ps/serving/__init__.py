"""Serving: what the Ray Serve app (serve/) and the user's front doors need.

`settings` (ServeConfig: serve.yaml and R2PS_* variables), the HTTP API's request and
response models, the search page (`web/`), the `r2ps` command (`cli`) and the MCP server
(`mcp`: stdio, and /mcp on the Serve app). The deployments themselves are bound in
`serve/` at the repository root.

May import: every layer below it (root, data, models, mining, search, evaluation, repo).
"""
