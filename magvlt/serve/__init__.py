"""`magvlt serve`: a JSON API with dynamic batching and a web page over any run directory (docs/serve.md)."""
