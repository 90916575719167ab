"""Reports assembled from the session store (JSON, Markdown, HTML)."""
