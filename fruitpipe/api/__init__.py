"""The HTTP API (FastAPI): the same app runs under uvicorn locally and in Lambda on AWS."""
