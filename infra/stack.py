"""``FruitpipeStack``: storage + HTTP API + S3 drop folder (part 1); retrain pipeline + monitoring (part 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aws_cdk import Stack, Tags
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from .nag import acknowledge

from .config import StackConfig
from .constructs.api import Api, FunctionSettings
from .constructs.ingest import Ingest
from .constructs.monitoring import Monitoring
from .constructs.pipeline import RetrainPipeline
from .constructs.storage import Storage

ARCH = {"x86_64": lambda_.Architecture.X86_64, "arm64": lambda_.Architecture.ARM_64}


class FruitpipeStack(Stack):
    """One stack, one stage. ``layer_dir`` and ``function_dir`` are built by scripts/build_layer.py."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig, layer_dir: Path,
                 function_dir: Path, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        Tags.of(self).add("project", "fruitpipe")
        Tags.of(self).add("stage", config.stage)
        self.settings = FunctionSettings(
            architecture=ARCH[config.architecture], memory_mb=config.memory_mb,
            reserved_concurrency=config.reserved_concurrency, throttle_rate=config.throttle_rate,
            throttle_burst=config.throttle_burst, admin_throttle_rate=config.admin_throttle_rate,
            admin_throttle_burst=config.admin_throttle_burst, stage=config.stage)

        self.storage = Storage(self, "Storage", retain=config.retain, upload_origins=config.upload_origins)
        # Third-party runtime packages (LiteRT, numpy, Pillow, FastAPI, ...) in a layer; our code,
        # the default model and the backbone in the function asset. Both are plain folders.
        self.layer = lambda_.LayerVersion(
            self, "RuntimeLayer",
            code=lambda_.Code.from_asset(str(layer_dir)),
            compatible_runtimes=[lambda_.Runtime.PYTHON_3_12],
            compatible_architectures=[self.settings.architecture],
            description=f"fruitpipe runtime packages (python3.12, {config.architecture})",
        )
        self.code = lambda_.Code.from_asset(str(function_dir))

        self.api = Api(self, "Api", storage=self.storage, code=self.code, layer=self.layer,
                       settings=self.settings, retain=config.retain)
        self.ingest = Ingest(self, "Ingest", storage=self.storage, code=self.code, layer=self.layer,
                             settings=self.settings, reserved_concurrency=config.ingest_concurrency,
                             retain=config.retain)

        # --- AWS part 2: retrain pipeline (Step Functions + SageMaker) and monitoring ------------
        self.pipeline = RetrainPipeline(self, "Retrain", storage=self.storage, code=self.code, layer=self.layer,
                                        settings=self.settings, retain=config.retain)
        self.api.connect_state_machine(self.pipeline.state_machine)
        self.pipeline.grant_status_read(self.api.function)
        self.monitoring = Monitoring(self, "Monitoring", api=self.api, ingest=self.ingest, pipeline=self.pipeline)

        self._acknowledge()

    def _acknowledge(self) -> None:
        """Stack-wide cdk-nag acknowledgements, each with its reason."""
        acknowledge(self, "AwsSolutions-L1",
                    "The functions pin python3.12 on purpose: the LiteRT wheels, the layer build and the "
                    "layer smoke test are for cp312; moving runtime is a tested change, not a default.")
        if not self.config.retain:
            # retain=false (throw-away stages) empties buckets on delete with CDK's custom resource.
            acknowledge(self, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole]",
                        "CDK's auto-delete-objects custom resource (retain=false stages only) uses the "
                        "AWS managed basic execution role.")
