"""The lrprobe SDK (pydantic + httpx only; torch and pandas are used only when asked for).

>>> from lrprobe import Client
>>> with Client() as lrp:  # $LRPROBE_URL, $LRPROBE_API_KEY
...     model = lrp.upload_model("model.safetensors")
...     rec = lrp.submit(model=model, data="builtin://digits", wait=True).recommendation()
>>> optimizer = torch.optim.SGD(rec.param_groups(net))

The wire contract lives in :mod:`lrprobe.client.schemas`.
"""

from lrprobe.client._async_client import AsyncClient
from lrprobe.client._client import Client
from lrprobe.client._errors import (
    ERROR_CLASSES,
    Conflict,
    ConnectionFailed,
    JobFailed,
    LrprobeError,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    ValidationFailed,
    WaitTimeout,
)
from lrprobe.client._jobs import AsyncJob, Job
from lrprobe.client._recommendation import Group, Recommendation
from lrprobe.client.schemas import ApiKeyCreated, ApiKeyOut, DatasetOut, JobOut, ModelOut

__all__ = [
    "ERROR_CLASSES",
    "ApiKeyCreated",
    "ApiKeyOut",
    "AsyncClient",
    "AsyncJob",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "DatasetOut",
    "Group",
    "Job",
    "JobFailed",
    "JobOut",
    "LrprobeError",
    "ModelOut",
    "NotFound",
    "RateLimited",
    "Recommendation",
    "ServerError",
    "Unauthorized",
    "ValidationFailed",
    "WaitTimeout",
]
