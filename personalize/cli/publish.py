"""push, share, serve."""

from __future__ import annotations

from typing import Optional

import typer

from registry.store import Registry, last_push, record_push

from . import app
from .errors import handle_errors, print_json
from .progress import stderr


def _registry_name(registry: Registry, path) -> str | None:
    """The registry name of an artifact path, or None for a directory outside the registry."""
    try:
        return path.name if path.parent.resolve() == registry.artifacts_dir.resolve() else None
    except OSError:
        return None


@app.command()
@handle_errors
def push(
    target: str = typer.Argument(..., help="registry name or artifact directory"),
    repo: str = typer.Option(..., "--repo", help="Hub repo id, ORG/NAME (created if missing)"),
    private: bool = typer.Option(False, "--private", help="create the repo as private"),
    revision: Optional[str] = typer.Option(None, "--revision", help="branch to push to (default main)"),
    message: Optional[str] = typer.Option(None, "--message", "-m", help="commit message"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Upload an artifact to the Hugging Face Hub in one commit (only what changed), then check it."""
    from publish.hub import push_artifact

    if json_out:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    registry = Registry()
    path = registry.resolve(target)
    name = _registry_name(registry, path)
    result = push_artifact(path, repo, private=private, revision=revision, message=message,
                           log=None if json_out else stderr.print)
    if name is not None:  # remembered for `share` and `serve`; only registry artifacts have a name
        record_push(registry.home, name, result.record())
    name = name or str(path)
    doc = {"name": name, **result.to_json()}
    if json_out:
        print_json(doc)
        return
    what = (f"committed {len(result.uploaded)} file(s)" + (f", deleted {len(result.deleted)}" if result.deleted else "")
            if result.commit else "already up to date")
    stderr.print(f"[green]pushed[/green] {name} -> {result.url} ({result.revision}): {what}; "
                 f"{len(result.files)} files checked against personalize.json")
    typer.echo(result.url)


@app.command()
@handle_errors
def share(
    target: str = typer.Argument(..., help="registry name or artifact directory"),
    repo: Optional[str] = typer.Option(None, "--repo", help="Hub repo id (default: where it was last pushed)"),
    local: bool = typer.Option(False, "--local", help="links for `personalize serve` instead of the Hub"),
    host: str = typer.Option("127.0.0.1", "--host", help="with --local: the serve host"),
    port: int = typer.Option(8765, "--port", help="with --local: the serve port"),
    model_lib: Optional[str] = typer.Option(None, "--model-lib", help="an MLC model library (.so/.dylib/.tar "
                                            "from mlc_llm compile) for the mlc_llm command and the app entry"),
    webllm_version: Optional[str] = typer.Option(None, "--webllm-version", help="name the prebuilt library of "
                                                 "this @mlc-ai/web-llm version (default: the newest)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON document"),
) -> None:
    """Print what each runtime takes: mlc_llm command, WebLLM ModelRecord, iOS/Android package entry."""
    import json

    from publish.client import DEFAULT_ENDPOINT, check_repo_id
    from publish.share import share_records

    registry = Registry()
    path = registry.resolve(target)
    name = _registry_name(registry, path)
    pushed = (last_push(registry.home, name) if name else None) or {}
    name = name or path.name
    revision, endpoint = "main", DEFAULT_ENDPOINT
    if repo is None and pushed:
        repo, revision = pushed["repo_id"], pushed.get("revision") or "main"
        endpoint = pushed.get("endpoint") or DEFAULT_ENDPOINT
    elif repo is not None:
        check_repo_id(repo)
        if pushed.get("repo_id") == repo:
            revision, endpoint = pushed.get("revision") or "main", pushed.get("endpoint") or DEFAULT_ENDPOINT
    doc = share_records(path, name=name, repo_id=None if local else repo, revision=revision, endpoint=endpoint,
                        local_url=f"http://{host}:{port}" if local else None, model_lib=model_lib,
                        webllm_version=webllm_version)
    if json_out:
        print_json(doc)
        return
    v = doc["vram"]
    typer.echo(f"# {name}: {doc['model_url']}")
    typer.echo(f"# VRAM estimate {v['total_MiB']} MiB (parameters {v['parameters'] / 2**20:.1f}, KV cache "
               f"{v['kv_cache'] / 2**20:.1f} at {v['context_window_size']} tokens, activations "
               f"{v['activations'] / 2**20:.1f})")
    typer.echo("\n## mlc_llm (Python / CLI)")
    typer.echo(doc["mlc_llm"]["command"])
    typer.echo("\n## WebLLM ModelRecord (appConfig.model_list entry)")
    if doc["webllm"]["model_record"] is not None:
        typer.echo(f"# @mlc-ai/web-llm {doc['webllm']['webllm_versions']}")
        typer.echo(json.dumps(doc["webllm"]["model_record"], indent=2))
    else:
        typer.echo(f"# none: {doc['webllm']['reason']}")
    typer.echo("\n## iOS / Android mlc-package-config.json model_list entry")
    typer.echo(json.dumps(doc["mlc_package_config"]["iphone"]["model_list"][0], indent=2))
    for note in doc["notes"]:
        stderr.print(f"[yellow]note[/yellow] {note}")


@app.command()
@handle_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8765, "--port", help="port to listen on (0 = any free port)"),
    webllm: Optional[str] = typer.Option(None, "--webllm",
                                         help="where the chat page loads web-llm from: an ES module URL, or a "
                                              "local web-llm package directory (default: the npm CDN build)"),
    prebuilt: Optional[str] = typer.Option(None, "--prebuilt",
                                           help="a local directory of MLC's prebuilt WebGPU libraries (.wasm), "
                                                "served at /prebuilt/ and preferred by the chat page"),
) -> None:
    """Serve every artifact in the Hub's /{repo}/resolve/{main|commit}/{file} layout, and a WebLLM chat page at /."""
    from pathlib import Path

    from personalize_errors import UserError
    from publish.serve import WEBLLM_CDN, ArtifactIndex, PageOptions, make_server

    webllm_dir = None
    if webllm and "://" not in webllm:
        webllm_dir = Path(webllm).expanduser()
        if not (webllm_dir / "lib" / "index.js").is_file():
            raise UserError(f"{webllm_dir} is not a web-llm package (no lib/index.js)", path=str(webllm_dir),
                            hint="pass node_modules/@mlc-ai/web-llm or an ES module URL")
    prebuilt_dir = Path(prebuilt).expanduser() if prebuilt else None
    if prebuilt_dir is not None and not prebuilt_dir.is_dir():
        raise UserError(f"no directory {prebuilt_dir}", path=str(prebuilt_dir),
                        hint="pass a directory that holds MLC's .wasm libraries")
    page = PageOptions(webllm_url=webllm if webllm and webllm_dir is None else WEBLLM_CDN, webllm_dir=webllm_dir,
                       prebuilt_dir=prebuilt_dir)
    registry = Registry()
    index = ArtifactIndex.from_registry(registry)
    server = make_server(index, host, port, page=page)
    bound_host, bound_port = server.server_address[:2]
    repos = index.repos()
    stderr.print(f"serving {len(set(repos.values()))} artifact(s) on http://{bound_host}:{bound_port} "
                 "(Ctrl-C to stop)")
    stderr.print(f"  chat page: http://{bound_host}:{bound_port}/ (web-llm from {page.module_url()})")
    for repo_id in sorted(repos):
        stderr.print(f"  http://{bound_host}:{bound_port}/{repo_id}/resolve/main/")
    # One machine-readable line on stdout so scripts (and tests) learn the port when --port 0.
    typer.echo(f"http://{bound_host}:{bound_port}", nl=True)
    import sys

    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
