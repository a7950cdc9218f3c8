"""The relay's error hierarchy: each class carries its HTTP meaning; `app.py` maps them once."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from relay.types import Ack


class RelayError(Exception):
    """A request the relay refuses. `reason` is the stable code of the contract."""

    status_code: ClassVar[int] = 500
    status: ClassVar[str] = "rejected"
    retry_after: int | None = None
    """Seconds for a `Retry-After` header: set on the refusals a retry is meant to get past."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class HeaderError(RelayError):
    """A MyTPE header is missing or malformed (`missing_header`, `malformed_header`)."""

    status_code = 400


class SignatureError(RelayError):
    """Replay window, signature or instance check failed (`stale_timestamp`, `future_timestamp`, `bad_signature`,
    `wrong_instance`)."""

    status_code = 401


class UnknownSource(RelayError):
    """The path names no configured source (`unknown_source`); counted under source="unknown"."""

    status_code = 404

    def __init__(self) -> None:
        super().__init__("unknown_source", "no source is served at this path")


class RotationWindow(RelayError):
    """A bad signature while the source's rotation window is open (`rotation_window`): the request is
    parked, and the sender is asked to retry once the new secret is installed."""

    status_code = 503
    status = "retry"

    def __init__(self, retry_after: int) -> None:
        super().__init__("rotation_window", "the source's secret is being rotated; retry later")
        self.retry_after = retry_after


class ParkingError(RelayError):
    """A bad signature that parking did not keep for sure (`parking_error`: Redis did not answer): a 401 would end
    a delivery whose secret is on its way, so the sender is asked to retry, and its retry may be parked."""

    status_code = 503
    status = "retry"
    retry_after = 5

    def __init__(self) -> None:
        super().__init__("parking_error", "parking did not answer; retry later")


class BodyTooLarge(RelayError):
    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__("body_too_large", f"limit is {limit} bytes")


class ClientGone(RelayError):
    """The client closed the connection before its body arrived; nothing was relayed."""

    status_code = 400

    def __init__(self) -> None:
        super().__init__("client_disconnected")


class BodyTimeout(RelayError):
    """The body did not arrive in time (a slow or stalled client); nothing was relayed. Answered 503 with
    `Retry-After`, not 408: MyTPE documents no rule for which statuses it retries (its docs say only "respond
    200"), and a sender that takes every 4xx as final would drop a delivery whose upload merely stalled."""

    status_code = 503
    status = "retry"
    retry_after = 1

    def __init__(self, seconds: float) -> None:
        super().__init__("body_timeout", f"the body did not arrive within {seconds:g}s")


class Unavailable(RelayError):
    """The event cannot be made durable now; the sender must retry (`unavailable`).

    `cause` is a bounded code used as the `publish_errors_total` label: `kafka_timeout`, `partition_stalled`,
    `kafka_error`, `kafka_refused`, `in_flight`, `overloaded`, `shutting_down`, `dedupe_error`, `spool_full`,
    `spool_error`.
    """

    status_code = 503
    status = "retry"

    def __init__(self, cause: str, detail: str = "", *, retry_after: int = 5) -> None:
        super().__init__("unavailable", detail)
        self.cause = cause
        self.retry_after: int | None = retry_after


class PublishPending(Unavailable):
    """No acknowledgement within the bound, but the record is still in the producer and may land.

    The idempotent producer retries a sent batch until it succeeds, so the delivery is neither
    durable nor failed yet: the caller must keep its dedupe claim until `outcome` settles.
    """

    def __init__(self, outcome: Coroutine[Any, Any, Ack], timeout: float, *, spool: Unavailable | None = None) -> None:
        """`spool`: the spool's refusal of the record meanwhile (`spool_full`, `spool_error`), whose cause and
        Retry-After the answer then carries."""
        super().__init__("kafka_timeout", f"no acknowledgement within {timeout:g}s")
        if spool is not None:
            self.cause, self.retry_after = spool.cause, spool.retry_after
        self.outcome = outcome


class KafkaRefused(Unavailable):
    """Kafka refused the record for good (`kafka_refused`): too large for the topic, invalid, or against
    a policy. Retrying or spooling it cannot help; a verified delivery goes to the DLQ instead. `detail`
    names the Kafka error. Answered as a 503 only when the DLQ refuses it too.
    """

    def __init__(self, error: str) -> None:
        super().__init__("kafka_refused", error)


class KafkaDenied(Unavailable):
    """Kafka refused the relay's principal on the topic (TopicAuthorizationFailed): an ACL, which the
    operator can fix and `/readyz` reports. Answered 503 `kafka_error` as always; never spooled (a spool
    would answer 2xx for a record Kafka refuses); a spooled record denied later stays spooled and retried.
    """

    def __init__(self, error: str) -> None:
        super().__init__("kafka_error", error)


class DedupeUnavailable(Unavailable):
    """The shared dedupe store did not answer; without it a retry could be published twice."""

    def __init__(self, operation: str, exc: Exception) -> None:
        super().__init__("dedupe_error", f"dedupe {operation} failed: {type(exc).__name__}")


class StartupError(Exception):
    """A resource could not be started within its bound; the process must exit non-zero."""
