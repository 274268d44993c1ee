"""cdk-nag v3 acknowledgements: every one names its rule (or finding) and says why."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge ``rule`` (e.g. ``AwsSolutions-S1`` or ``AwsSolutions-IAM5[Resource::…]``) on ``scope``."""
    if len(reason) < 20:
        raise ValueError(f"{rule}: write a real reason")
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


def iam5_object_finding(bucket, pattern: str) -> str:  # type: ignore[no-untyped-def]
    """The IAM5 finding id cdk-nag reports for ``<bucket ARN>/<pattern>`` in a policy."""
    from aws_cdk import Stack
    logical_id = Stack.of(bucket).get_logical_id(bucket.node.default_child)
    return f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>/{pattern}]"
