"""Cluster and developer tooling: the `bkv` CLI, launcher, compose layout, certs, demo, benches.

Everything that runs or measures a cluster lives here so that an app embedding
``client_sdk`` ships none of it. May import every package of the project; none imports it.
"""
