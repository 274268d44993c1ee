"""CDK constructs composed by :class:`infra.stack.FruitpipeStack`."""
