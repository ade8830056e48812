"""`personalize check ARTIFACT --lib` and `add --lib`, against MLC's real prebuilt libraries.

Real weights: a Qwen2-0.5B-shaped random model (tests/shaped_models.py) converted by `personalize add`
and checked against MLC's real v0_2_48 .wasm files (slow: ~1 GB written once per session, ~40 s per add).
Paper artifacts: for every metadata file of a supported architecture (llama, mistral, qwen2, gemma2,
phi3), an artifact's records and chat config as `add` writes them, without weight bytes (see
shaped_models.py for what that proves), checked against a library file that embeds exactly MLC's
metadata. The new architectures' real-weight path is covered by tiny random models (no library fits
them, by design) rather than by a 2.6B-3.8B full-shape model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.shaped_models import hf_config, write_paper_artifact, write_shaped_model

DATA = Path(__file__).parent / "data" / "prebuilt"
WASM_Q4F32 = DATA / "v0_2_48" / "Qwen2-0.5B-Instruct-q4f32_1-ctx4k_cs1k-webgpu.wasm"
WASM_Q0F32 = DATA / "v0_2_48" / "Qwen2-0.5B-Instruct-q0f32-ctx4k_cs1k-webgpu.wasm"
SUPPORTED = {"llama", "mistral", "qwen2", "gemma2", "phi3"}
SUPPORTED_METADATA = [p for p in sorted((DATA / "metadata").glob("*.json"))
                      if json.loads(p.read_text())["model_type"] in SUPPORTED]


def check(artifact: Path, lib: Path, *extra: str) -> tuple[int, dict, str]:
    code, out, err = run_cli("check", str(artifact), "--lib", str(lib), "--json", *extra)
    return code, (json.loads(out) if out.strip() else {}), err


def fields(doc: dict) -> set[str]:
    return {m["field"] for m in doc["mismatches"]}


def library_file(tmp_path: Path, metadata_path: Path) -> Path:
    """A file named like MLC's library that embeds exactly the metadata MLC's library embeds."""
    lib = tmp_path / (metadata_path.stem + ".wasm")
    embedded = json.dumps(json.loads(metadata_path.read_text())).encode()  # as MLC embeds it: one line
    lib.write_bytes(b"\x00asm\x01\x00\x00\x00" + b"\x00" * 64 + embedded + b"\x00")
    return lib


def base_of(metadata_path: Path) -> str:
    return metadata_path.stem.split("-q")[0]


# ----------------------------------------------------------------------------- real weights (slow)
@pytest.fixture(scope="session")
def qwen2_05b_dir(tmp_path_factory) -> Path:
    """Qwen2-0.5B-Instruct's published shapes and values, random bf16 weights (~1 GB)."""
    return write_shaped_model(tmp_path_factory.mktemp("shaped") / "qwen2-0.5b-shaped",
                              hf_config("Qwen2-0.5B-Instruct"))


def variant_dir(base_dir: Path, out: Path, **config_changes) -> Path:
    """The same weights (symlinked) under a config.json with `config_changes`."""
    out.mkdir(parents=True)
    for f in base_dir.iterdir():
        if f.name != "config.json":
            (out / f.name).symlink_to(f)
    cfg = json.loads((base_dir / "config.json").read_text())
    cfg.update(config_changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


def add(source: Path, out: Path, quantization: str, *extra: str) -> tuple[int, dict, str]:
    code, stdout, err = run_cli("add", str(source), "-q", quantization, "--no-eval", "--output", str(out), "--json",
                                *extra, env={"PERSONALIZE_HOME": str(out.parent / "home")})
    return code, (json.loads(stdout) if code == 0 else {}), err


@pytest.fixture(scope="session")
def qwen2_artifact(qwen2_05b_dir, tmp_path_factory) -> Path:
    """`personalize add --lib <MLC's wasm>`: sized for the library and checked against it at add time."""
    out = tmp_path_factory.mktemp("art") / "qwen2-0.5b-q4f32_1"
    code, _, err = add(qwen2_05b_dir, out, "q4f32_1", "--lib", str(WASM_Q4F32))
    assert code == 0, err
    return out


@pytest.mark.slow
def test_fresh_qwen2_artifact_runs_on_mlcs_wasm(qwen2_artifact):
    code, doc, err = check(qwen2_artifact, WASM_Q4F32)
    assert code == 0, err
    assert doc["ok"] and doc["mismatches"] == [] and doc["metadata"]["params"] == 267
    assert doc["reference"]["base_model"] == "Qwen2-0.5B-Instruct"
    chat = json.loads((qwen2_artifact / "mlc-chat-config.json").read_text())
    assert (chat["context_window_size"], chat["prefill_chunk_size"]) == (4096, 1024)  # the library's, not 32768/8192
    lineage = json.loads((qwen2_artifact / "personalize.json").read_text())
    assert lineage["library_check"]["ok"] is True
    assert lineage["prebuilt_library"]["base_model"] == "Qwen2-0.5B-Instruct"
    assert lineage["prebuilt_library"]["url"].endswith("/Qwen2-0.5B-Instruct-q4f32_1_cs1k-webgpu.wasm")
    card = (qwen2_artifact / "README.md").read_text()  # the model card names the same library for WebLLM
    assert "CreateMLCEngine" in card and lineage["prebuilt_library"]["url"] in card
    assert "context_window_size: 4096" in card


@pytest.mark.slow
@pytest.mark.parametrize("change,field", [({"rms_norm_eps": 1e-5}, "model_config.rms_norm_eps"),
                                          ({"rope_theta": 10000.0}, "model_config.rope_theta")])
def test_a_wrong_compiled_in_value_is_named(qwen2_05b_dir, tmp_path, change, field):
    model = variant_dir(qwen2_05b_dir, tmp_path / "variant", **change)
    code, _, err = add(model, tmp_path / "art", "q4f32_1")
    assert code == 0, err
    code, doc, err = check(tmp_path / "art", WASM_Q4F32)
    assert code == 1 and field in fields(doc)
    # same weights and shapes: every parameter matches, only compiled-in values and limits differ
    assert not any(f.startswith("params.") for f in fields(doc))
    _, _, text_err = run_cli("check", str(tmp_path / "art"), "--lib", str(WASM_Q4F32))
    assert field in text_err


@pytest.mark.slow
def test_wrong_quantization_is_named(qwen2_05b_dir, tmp_path):
    code, _, err = add(qwen2_05b_dir, tmp_path / "art", "q4f16_1")
    assert code == 0, err
    code, doc, _ = check(tmp_path / "art", WASM_Q4F32)
    assert code == 1 and "quantization" in fields(doc)
    # q_scale is float16 here, float32 in the library: every such parameter is named
    assert "params.model.embed_tokens.q_scale.dtype" in fields(doc)


@pytest.mark.slow
def test_q0f32_artifact_runs_on_mlcs_q0f32_wasm(qwen2_05b_dir, tmp_path):
    code, _, err = add(qwen2_05b_dir, tmp_path / "art", "q0f32")
    assert code == 0, err
    code, doc, err = check(tmp_path / "art", WASM_Q0F32)
    assert code == 0, err
    code, doc, _ = check(tmp_path / "art", WASM_Q4F32)
    assert code == 1 and {"quantization", "params.model.embed_tokens.q_weight"} <= fields(doc)


def test_add_lib_refuses_a_library_that_does_not_fit_and_writes_nothing(tiny_qwen2, tmp_path):
    code, _, err = add(tiny_qwen2, tmp_path / "art", "q4f32_1", "--lib", str(WASM_Q4F32))
    assert code == 2 and "does not fit" in err and "hidden_size" in err
    assert not (tmp_path / "art").exists()


# ----------------------------------------------------------------------------- every metadata file (fast)
@pytest.mark.parametrize("meta_path", SUPPORTED_METADATA, ids=lambda p: p.stem)
def test_paper_artifact_of_the_base_fits_each_mlc_library(meta_path, tmp_path):
    meta = json.loads(meta_path.read_text())
    base = base_of(meta_path)
    # --prefill-chunk as `add --lib` takes it from the library (only needed where no catalogued library fits)
    art = write_paper_artifact(tmp_path / "art", hf_config(base), meta["quantization"],
                               prefill_chunk=meta["prefill_chunk_size"])
    lib = library_file(tmp_path, meta_path)
    extra: tuple[str, ...] = ()
    if base == "TinyLlama-1.1B-Chat-v0.4":  # its q0f32 library is not in WebLLM's records: name the base config
        cfg = tmp_path / "base-config.json"
        cfg.write_text(json.dumps(hf_config(base)))
        extra = ("--base-config", str(cfg))
    code, doc, err = check(art, lib, *extra)
    assert code == 0, (err, doc.get("mismatches"))
    assert doc["metadata"]["params"] == len(meta["params"])
    if not extra:  # the compiled-in values were checked against this very base's catalog entry (Phi-4-mini's
        # ctx4k file predates WebLLM's records of it: found by its metadata, not its name)
        assert doc["reference"]["base_model"] == base
        assert doc["reference"]["source"] in ("catalog (file name)", "catalog (library metadata)")


@pytest.mark.parametrize("base,quant", [("Mistral-7B-Instruct-v0.3", "q4f16_1"), ("Qwen2-7B-Instruct", "q4f32_1"),
                                        ("Llama-3.2-1B-Instruct", "q0f16"), ("gemma-2-2b-it", "q4f16_1"),
                                        ("Phi-4-mini-instruct", "q4f32_1")])
def test_one_layer_less_is_named_and_nothing_else(base, quant, tmp_path):
    """Control for the paper artifacts: the comparison sees a shape difference, and only that one."""
    meta_path = DATA / "metadata" / f"{base}-{quant}-ctx4k_cs1k-webgpu.json"
    cfg = hf_config(base)
    layers = cfg["num_hidden_layers"]
    art = write_paper_artifact(tmp_path / "art", dict(cfg, num_hidden_layers=layers - 1), quant, prefill_chunk=1024)
    code, doc, _ = check(art, library_file(tmp_path, meta_path))
    assert code == 1
    missing = {f for f in fields(doc) if f.startswith("params.")}
    assert missing and all(f".layers.{layers - 1}." in f or f".h.{layers - 1}." in f for f in missing)
    assert fields(doc) - missing == {"model_config.num_hidden_layers"}


def test_limits_prefill_breaks_context_only_costs_memory(tmp_path):
    meta_path = DATA / "metadata" / "Qwen2-0.5B-Instruct-q4f16_1-ctx4k_cs1k-webgpu.json"
    art = write_paper_artifact(tmp_path / "art", hf_config("Qwen2-0.5B-Instruct"), "q4f16_1")
    lib = library_file(tmp_path, meta_path)
    chat_path = art / "mlc-chat-config.json"
    chat = json.loads(chat_path.read_text())
    chat_path.write_text(json.dumps(dict(chat, context_window_size=32768)))
    code, doc, _ = check(art, lib)
    assert code == 0 and any("context_window_size 32768" in n for n in doc["notes"])
    chat_path.write_text(json.dumps(dict(chat, prefill_chunk_size=8192)))
    code, doc, _ = check(art, lib)
    assert code == 1 and fields(doc) == {"prefill_chunk_size"}


def test_untied_head_on_a_tied_library(tmp_path):
    meta_path = DATA / "metadata" / "Llama-3.2-1B-Instruct-q0f16-ctx4k_cs1k-webgpu.json"
    art = write_paper_artifact(tmp_path / "art", hf_config("Llama-3.2-1B-Instruct", tie_word_embeddings=False),
                               "q0f16", prefill_chunk=1024)
    code, doc, _ = check(art, library_file(tmp_path, meta_path))
    assert code == 1 and fields(doc) == {"model_config.tie_word_embeddings"}
    assert any("lm_head.weight" in n for n in doc["notes"])  # the extra tensor is ignored by the runtime


def test_base_config_overrides_the_catalog(tmp_path):
    meta_path = DATA / "metadata" / "Qwen2-1.5B-Instruct-q4f16_1-ctx4k_cs1k-webgpu.json"
    art = write_paper_artifact(tmp_path / "art", hf_config("Qwen2-1.5B-Instruct"), "q4f16_1")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(hf_config("Qwen2-1.5B-Instruct", rope_theta=10000.0)))
    code, doc, _ = check(art, library_file(tmp_path, meta_path), "--base-config", str(cfg))
    assert code == 1 and fields(doc) == {"model_config.rope_theta"} and doc["reference"]["source"] == "base-config"


def test_unknown_library_without_base_config_cannot_be_confirmed(tmp_path):
    meta_path = DATA / "metadata" / "TinyLlama-1.1B-Chat-v0.4-q0f32-ctx2k_cs1k-webgpu.json"
    art = write_paper_artifact(tmp_path / "art", hf_config("TinyLlama-1.1B-Chat-v0.4"), "q0f32", prefill_chunk=1024)
    code, doc, _ = check(art, library_file(tmp_path, meta_path))
    assert code == 1 and fields(doc) == {"base_config"}
    assert "--base-config" in doc["mismatches"][0]["message"]


def test_user_errors_exit_2(tmp_path):
    art = write_paper_artifact(tmp_path / "art", hf_config("Qwen2-0.5B-Instruct"), "q4f32_1")
    code, _, err = run_cli("check", str(art), "--lib", str(tmp_path / "missing.wasm"))
    assert code == 2 and "missing.wasm" in err
    (tmp_path / "not-a-lib.so").write_bytes(os.urandom(256))
    code, _, err = run_cli("check", str(art), "--lib", str(tmp_path / "not-a-lib.so"))
    assert code == 2 and "no MLC model metadata" in err
    code, _, err = run_cli("check", str(art), "--lib", str(WASM_Q4F32), "--base-config", str(tmp_path / "nope.json"))
    assert code == 2 and "nope.json" in err
    code, _, err = run_cli("check", str(tmp_path / "no-artifact"), "--lib", str(WASM_Q4F32))
    assert code == 2


# ----------------------------------------------------------------------------- add: limits and the log line
def test_add_without_a_fitting_library_says_so_once(tiny_llama, tmp_path):
    code, _, err = run_cli("add", str(tiny_llama), "--no-eval", "--quiet", "--output", str(tmp_path / "art"),
                           env={"PERSONALIZE_HOME": str(tmp_path / "home")})
    assert code == 0, err
    said = [line for line in err.splitlines() if "no MLC prebuilt WebGPU library" in line]
    assert len(said) == 1 and said[0].startswith("note: no MLC prebuilt WebGPU library for llama with hidden 64")
    lineage = json.loads((tmp_path / "art" / "personalize.json").read_text())
    assert lineage["prebuilt_library"] == {"library": None, "reason": said[0][len("note: "):]}
    chat = json.loads((tmp_path / "art" / "mlc-chat-config.json").read_text())
    assert chat["context_window_size"] == 256  # the model's own (max_position_embeddings), nothing to fit


def test_add_context_and_prefill_options(tiny_llama, tmp_path):
    code, _, err = add(tiny_llama, tmp_path / "a", "q4f16_1", "--context-window", "128", "--prefill-chunk", "32")
    assert code == 0, err
    chat = json.loads((tmp_path / "a" / "mlc-chat-config.json").read_text())
    assert (chat["context_window_size"], chat["prefill_chunk_size"]) == (128, 32)
    assert (chat["model_config"]["context_window_size"], chat["model_config"]["prefill_chunk_size"]) == (128, 32)
    lineage = json.loads((tmp_path / "a" / "personalize.json").read_text())
    assert lineage["compiled_config"]["prefill_chunk_size"] == 32  # our own library is compiled for the same limits


def test_lib_by_url_is_downloaded(tmp_path):
    """An http(s) URL is fetched to a temp file (here from a local server; MLC's are on GitHub)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(WASM_Q4F32.parent))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        art = write_paper_artifact(tmp_path / "art", hf_config("Qwen2-0.5B-Instruct"), "q4f32_1")
        url = f"http://127.0.0.1:{server.server_address[1]}/{WASM_Q4F32.name}"
        code, doc, err = check(art, url)
        assert code == 0, err
        assert doc["library"] == url and doc["reference"]["source"] == "catalog (file name)"
        code, _, err = run_cli("check", str(art), "--lib", url.replace(".wasm", "-missing.wasm"))
        assert code == 2 and "cannot download" in err
    finally:
        server.shutdown()


# ----------------------------------------------------------------------------- the new architectures
NEW_ARCH_LIBRARIES = [("gemma-2-2b-it", "q4f16_1"), ("gemma-2-2b-it", "q4f32_1"), ("Phi-3.5-mini-instruct", "q4f32_1"),
                      ("Phi-4-mini-instruct", "q4f32_1")]


@pytest.mark.parametrize("base,quant", NEW_ARCH_LIBRARIES)
def test_new_arch_paper_artifact_finds_the_catalog_library_and_share_names_it(base, quant, home):
    """`add`'s choice for a full-shape base (no --prefill-chunk given: the catalog decides), checked against
    MLC's embedded metadata of that base, and `share --json` names the catalog's URL with context 4096."""
    from catalog import find_by_file

    name = f"{base.lower()}-{quant}"
    art = write_paper_artifact(home / "artifacts" / name, hf_config(base), quant)
    lineage = json.loads((art / "personalize.json").read_text())
    lib = lineage["prebuilt_library"]
    assert lib["base_model"] == base and lib["url"].endswith(f"/v0_2_86/base/{base}-{quant}_cs1k-webgpu.wasm")
    chat = json.loads((art / "mlc-chat-config.json").read_text())
    assert (chat["context_window_size"], chat["prefill_chunk_size"]) == (4096, 1024)
    meta_path = DATA / "metadata" / f"{base}-{quant}-ctx4k_cs1k-webgpu.json"
    code, doc, err = check(art, library_file(home, meta_path))
    assert code == 0, (err, doc.get("mismatches"))
    code, out, err = run_cli("share", name, "--repo", "me/ft", "--json")
    assert code == 0, err
    rec = json.loads(out)["webllm"]["model_record"]
    assert rec["model_lib"] == lib["url"] and rec["overrides"] == {"context_window_size": 4096}
    (entry,) = [x for x in find_by_file(rec["model_lib"]) if x.url == rec["model_lib"]]
    assert entry.base_model == base and entry.quantization == quant


@pytest.mark.parametrize("base,change,field", [("gemma-2-2b-it", {"attn_logit_softcapping": 40.0},
                                                "model_config.attn_logit_softcapping"),
                                               ("Phi-4-mini-instruct", {"partial_rotary_factor": 0.5},
                                                "model_config.partial_rotary_factor")])
def test_new_arch_compiled_in_value_is_named_by_check(base, change, field, tmp_path):
    """Same shapes, one compiled-in value the metadata does not carry: only the catalog entry catches it."""
    meta_path = DATA / "metadata" / f"{base}-q4f32_1-ctx4k_cs1k-webgpu.json"
    art = write_paper_artifact(tmp_path / "art", hf_config(base, **change), "q4f32_1", prefill_chunk=1024)
    code, doc, _ = check(art, library_file(tmp_path, meta_path))
    assert code == 1 and fields(doc) == {field}


@pytest.mark.parametrize("fixture", ["tiny_qwen3", "tiny_gemma2", "tiny_gemma3", "tiny_phi3"])
def test_tiny_new_arch_add_has_no_prebuilt_library_and_says_why(fixture, request, tmp_path):
    """A real `add` of a tiny random model of each new architecture: no MLC library has its shapes, which
    personalize.json records in one plain sentence; checked against the full-shape library, the shapes
    are what `check --lib` names."""
    model = request.getfixturevalue(fixture)
    model_type = json.loads((model / "config.json").read_text())["model_type"]
    code, _, err = add(model, tmp_path / "art", "q4f16_1")
    assert code == 0, err
    lineage = json.loads((tmp_path / "art" / "personalize.json").read_text())
    record = lineage["prebuilt_library"]
    assert record["library"] is None
    assert record["reason"].startswith(f"no MLC prebuilt WebGPU library for {model_type} with hidden ")
    assert "mlc_llm compile" in record["reason"]
    full = {"gemma2": "gemma-2-2b-it-q4f16_1", "phi3": "Phi-4-mini-instruct-q4f32_1"}.get(model_type)
    if full:
        code, doc, _ = check(tmp_path / "art", library_file(tmp_path, DATA / "metadata" / f"{full}-ctx4k_cs1k-webgpu.json"))
        assert code == 1 and "model_config.hidden_size" in fields(doc)
        assert any(f.startswith("params.") and f.endswith(".shape") for f in fields(doc))
