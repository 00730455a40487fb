"""Client for the Agent700 external usage billing API.

    from agent700_billing import Client

    with Client("https://billing.internal", token) as billing:
        accepted = billing.record_usage(user_id=..., organization_id=..., model_name="gpt-4o-mini",
                                        input_tokens=1200, output_tokens=340, service_name="transcription")
"""

__version__ = "0.1.0"

from agent700_billing.client import Client  # noqa: E402
from agent700_billing.errors import ApiError, BatchIncomplete, BillingError, DeadlineExceeded, NotFound  # noqa: E402
from agent700_billing.models import (  # noqa: E402
    Accepted,
    BatchItemResult,
    ErrorDetail,
    StripeReport,
    UsageEvent,
    UsageRecord,
    new_idempotency_key,
)
from agent700_billing.retry import RetryPolicy  # noqa: E402

__all__ = [
    "Accepted",
    "ApiError",
    "BatchIncomplete",
    "BatchItemResult",
    "BillingError",
    "Client",
    "DeadlineExceeded",
    "ErrorDetail",
    "NotFound",
    "RetryPolicy",
    "StripeReport",
    "UsageEvent",
    "UsageRecord",
    "new_idempotency_key",
]
