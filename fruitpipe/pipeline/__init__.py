"""The retrain pipeline's step logic (AWS), runnable without Lambda.

Each module is one state of the Step Functions state machine (``infra/constructs/pipeline.py``);
``functions/pipeline/<step>/handler.py`` only reads the environment and calls in here, so the same
code runs in Lambda, in ``make cloud-demo`` and in the tests against a moto server.
"""
