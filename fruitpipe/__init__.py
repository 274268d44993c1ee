"""fruitpipe: fresh-vs-rotten fruit classification, served on one machine or on AWS."""

__version__ = "0.1.0"
