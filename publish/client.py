"""The Hugging Face Hub client bits that push (publish.hub) and pull (ingest.hub) share.

One `HfApi` per operation; the token comes from the caller, HF_TOKEN or the `hf auth login` cache
(huggingface_hub's `get_token`) and is handed to HfApi only: never printed, logged or written.
huggingface_hub's exceptions become one of ours (one line, a hint, exit 2 at the CLI).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from personalize_errors import UserError

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class HubError(UserError):
    """A Hub request failed; carries `path` (repo or file at fault) and `hint`."""


class HubAuthError(HubError):
    """No token, or the Hub rejected it."""


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id or ""):
        raise HubError(f"invalid Hub repo id {repo_id!r}", hint="use ORG/NAME, e.g. alice/smollm2-chat-q4f16_1-MLC")
    return repo_id


def get_token(token: str | None = None) -> str | None:
    import huggingface_hub

    return token or huggingface_hub.get_token()


def resolve_token(token: str | None = None) -> str:
    """A token for writing, or HubAuthError saying how to get one."""
    token = get_token(token)
    if not token:
        raise HubAuthError("no Hugging Face token found",
                           hint="set HF_TOKEN to a write token (https://huggingface.co/settings/tokens) "
                                "or run `hf auth login`")
    return token


def make_api(token: str | None = None, endpoint: str | None = None):
    import huggingface_hub

    return huggingface_hub.HfApi(endpoint=endpoint, token=token)


def _status(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def translate(exc: BaseException, repo_id: str, endpoint: str) -> HubError | None:
    """A huggingface_hub / transport exception as one of ours, or None if it is not one we know."""
    from huggingface_hub import errors as hf_errors

    try:
        import httpx2 as transport
    except ImportError:  # older huggingface_hub (httpx / requests)
        transport = None
    if transport is not None and isinstance(exc, transport.TransportError):
        return HubError(f"cannot reach the Hub at {endpoint}: {type(exc).__name__}", path=endpoint,
                        hint="check the network connection (and HF_ENDPOINT if you set it), then run the "
                             "same command again: finished uploads are not repeated")
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return HubError(f"revision not found in {repo_id}", path=repo_id,
                        hint="check the branch, tag or commit after '@'")
    if isinstance(exc, hf_errors.GatedRepoError):
        return HubAuthError(f"{repo_id} is gated", path=repo_id,
                            hint="accept its terms on the Hub, then set HF_TOKEN to a token of that account")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        return HubError(f"repository {repo_id} not found", path=repo_id,
                        hint="check the repo id; for a private repo set HF_TOKEN to a token that can read it")
    status = _status(exc)
    if status == 401:
        return HubAuthError("the Hugging Face Hub rejected the token (401 Unauthorized)", path=endpoint,
                            hint="set HF_TOKEN to a valid write token (https://huggingface.co/settings/tokens) "
                                 "or run `hf auth login`")
    if status == 403:
        return HubAuthError(f"the token may not write to {repo_id} (403 Forbidden)", path=repo_id,
                            hint="use a token with write access to that user or organization")
    if isinstance(exc, hf_errors.HfHubHTTPError):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return HubError(f"the Hub refused the request: {first}", path=repo_id,
                        hint="run the same command again; finished uploads are not repeated")
    if isinstance(exc, ValueError) and status is None and "json" in type(exc).__name__.lower():
        return HubError(f"the Hub at {endpoint} answered something that is not JSON", path=endpoint,
                        hint="check HF_ENDPOINT: it must point at a Hugging Face Hub")
    return None


def hub_call(fn: Callable[[], Any], repo_id: str, endpoint: str) -> Any:
    """Run one huggingface_hub call; its errors come out as HubError (anything unknown is re-raised)."""
    try:
        return fn()
    except HubError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below or re-raised untouched
        # huggingface_hub wraps upload failures ("Error while uploading 'x'") around the HTTP error.
        cause: BaseException | None = exc
        while cause is not None:
            ours = translate(cause, repo_id, endpoint)
            if ours is not None:
                if cause is not exc:
                    ours = type(ours)(f"{str(exc).strip().rstrip('.')}: {ours}", path=ours.path, hint=ours.hint)
                raise ours from exc
            cause = cause.__cause__ or cause.__context__
        raise
