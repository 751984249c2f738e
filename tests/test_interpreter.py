"""The interpreter seam: LiteRT first, a clear error for a backend that is not installed."""
import subprocess
import sys

import pytest

from edge_agent.interpreter import BACKENDS, NoInterpreterBackend, load_backend


def test_auto_picks_litert_here():
    b = load_backend("auto")
    assert b.name == "ai_edge_litert"
    assert b.describe().startswith("ai_edge_litert ") and b.version != "unknown"
    assert callable(b.interpreter_class)


def test_asking_for_a_missing_backend_says_what_to_install():
    with pytest.raises(NoInterpreterBackend, match="tflite_runtime.*install ai-edge-litert"):
        load_backend("tflite_runtime")


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown interpreter backend"):
        load_backend("onnx")


def test_auto_falls_back_in_order_when_litert_is_absent():
    # a fresh interpreter where ai_edge_litert cannot be imported: auto tries the rest in order
    code = (
        "import sys; sys.modules['ai_edge_litert'] = None; sys.modules['ai_edge_litert.interpreter'] = None\n"
        "from edge_agent.interpreter import load_backend, NoInterpreterBackend\n"
        "try:\n    print('GOT', load_backend().name)\n"
        "except NoInterpreterBackend as e:\n    print('NONE', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith(("GOT tflite_runtime", "GOT tensorflow", "NONE"))
    if out.startswith("NONE"):
        for name in BACKENDS:
            assert f"{name}:" in out  # every backend tried, each with its reason


def test_the_agent_does_not_import_tensorflow_or_scipy_at_run_time():
    code = (
        "import sys, edge_agent.agent, edge_agent.cli, edge_agent.interpreter as i; i.load_backend()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'scipy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
