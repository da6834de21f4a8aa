"""The one place that turns errors into gRPC statuses with rich details.

Servicers raise LedgerError subclasses and never touch status codes; an interceptor
applies this table to every method, so the mapping cannot drift between services.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from ledger.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    InvalidArgument,
    LedgerError,
    NotFound,
    RuleViolated,
    Unavailable,
)
from ledger.grpc.types import Context

log = logging.getLogger("ledger.grpc")
ERROR_DOMAIN = "ledger"

STATUS_CODES: dict[type[LedgerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    RuleViolated: grpc.StatusCode.FAILED_PRECONDITION,
    ConcurrencyConflict: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_code_for(error: LedgerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        code = STATUS_CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def to_status(error: LedgerError) -> grpc.Status:
    code = status_code_for(error)
    details = []
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if error.reason:
        details.append(
            _packed(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN))
        )
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return cast(grpc.Status, rpc_status.to_status(status))


INTERNAL_MESSAGE = "internal error"

Unary = Callable[[Any, Context], Awaitable[Any]]
Streaming = Callable[[Any, Context], AsyncIterator[Any]]


async def _abort_for(error: BaseException, context: Context, method: str) -> None:
    if isinstance(error, LedgerError):
        log.info(
            "request refused",
            extra={"method": method, "error": error.message, "reason": error.reason},
        )
        await context.abort_with_status(to_status(error))
    log.exception("unhandled error", extra={"method": method}, exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


def _wrap_unary(behavior: Unary, method: str) -> Unary:
    async def handler(request: Any, context: Context) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_for(error, context, method)

    return handler


def _wrap_stream(behavior: Streaming, method: str) -> Streaming:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort_for(error, context, method)

    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/ledger."):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(cast(Unary, handler.unary_unary), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(cast(Streaming, handler.unary_stream), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler
