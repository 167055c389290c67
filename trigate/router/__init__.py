"""The router: which deployment of a model group serves a request."""

from trigate.router.deployments import Deployment, ModelGroups

__all__ = ["Deployment", "ModelGroups"]
