"""SageMaker training entry point for fruitpipe (``python -m training_job``)."""
