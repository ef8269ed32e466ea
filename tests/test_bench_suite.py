"""The benchmark suite's machinery (CI does not run the benchmarks themselves): the sizes
option, the plan of each mode, the rounds, and the summary table on made-up rows."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from _suite import (  # noqa: E402
    FULL_SIZES,
    LOG_DOMAIN_MAX_ENTRIES,
    QUICK_SIZES,
    Row,
    case_id,
    parse_sizes,
    plan,
    rounds_for,
    summary_lines,
)


def _bench_conftest():
    """benchmarks/conftest.py under its own module name (tests/ has a conftest too)."""
    spec = importlib.util.spec_from_file_location("_bench_conftest", BENCH / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeConfig:
    def __init__(self, full=False, sizes=None):
        self.options = {"--bench-full": full, "--bench-sizes": sizes}

    def getoption(self, name, default=None):
        return self.options.get(name, default)


# -- sizes -----------------------------------------------------------------------------------
def test_parse_sizes():
    assert parse_sizes("20000x100,200000x1000") == [(20000, 100), (200000, 1000)]
    assert parse_sizes(" 50000X300 , ") == [(50000, 300)]


@pytest.mark.parametrize("spec", ["", ",", "20000", "20000x", "0x10", "20000x100x3", "2e4x100", "-5x10"])
def test_parse_sizes_rejects(spec):
    with pytest.raises(ValueError, match="N x K pairs|at least one"):
        parse_sizes(spec)


def test_parse_sizes_names_the_bad_item():
    with pytest.raises(ValueError, match=r"got '3000y30' in '20000x100,3000y30'"):
        parse_sizes("20000x100,3000y30")


# -- the plan of each mode --------------------------------------------------------------------------
def test_quick_plan_one_size_every_method_but_log_domain():
    cases = plan(full=False)
    assert {size for size, _ in cases} == set(parse_sizes(QUICK_SIZES))
    assert len(parse_sizes(QUICK_SIZES)) == 1
    ids = [mid for _, mid in cases]
    for mid in ("numba", "numpy", "torch", "torch-cuda", "cupy", "paper-loop", "pot-sinkhorn"):
        assert mid in ids
    assert "pot-sinkhorn_log" not in ids
    assert ids.index("paper-loop") < ids.index("pot-sinkhorn")  # POT starts from the paper's count


def test_full_plan_is_results_sizes_with_log_domain_where_affordable():
    cases = plan(full=True)
    sizes = parse_sizes(FULL_SIZES)
    assert [s for s in dict.fromkeys(size for size, _ in cases)] == sizes  # size by size, in order
    log_sizes = [size for size, mid in cases if mid == "pot-sinkhorn_log"]
    assert log_sizes == [s for s in sizes if s[0] * s[1] <= LOG_DOMAIN_MAX_ENTRIES]
    assert log_sizes == [(20000, 100)]
    # the cases of one size are contiguous (one problem in memory at a time)
    order = [size for size, _ in cases]
    assert order == sorted(order, key=sizes.index)


def test_explicit_sizes_replace_the_mode_sizes():
    assert {s for s, _ in plan(False, "1000x10,2000x20")} == {(1000, 10), (2000, 20)}
    assert {s for s, _ in plan(True, "3000x30")} == {(3000, 30)}
    assert ((3000, 30), "pot-sinkhorn_log") in plan(True, "3000x30")
    assert ((3000, 30), "pot-sinkhorn_log") not in plan(False, "3000x30")


def test_case_ids():
    assert case_id((50000, 300), "numba-plain") == "50000x300-numba-plain"


def test_rounds():
    assert rounds_for(0.01, full=True) == rounds_for(100.0, full=True) == 3
    assert rounds_for(0.01, full=False) == 5
    assert rounds_for(1.0, full=False) == 3
    assert rounds_for(2.0, full=False) == 1
    assert rounds_for(60.0, full=False) == 1


# -- the options, through benchmarks/conftest.py -------------------------------------------------
def test_options_choose_the_cases(monkeypatch):
    conf = _bench_conftest()
    monkeypatch.delenv("SINKLABEL_BENCH_SIZES", raising=False)
    assert conf.bench_cases(FakeConfig()) == plan(False)
    assert conf.bench_cases(FakeConfig(full=True)) == plan(True)
    assert conf.bench_cases(FakeConfig(sizes="1000x10")) == plan(False, "1000x10")
    monkeypatch.setenv("SINKLABEL_BENCH_SIZES", "2000x20")
    assert conf.bench_cases(FakeConfig(full=True)) == plan(True, "2000x20")
    assert conf.bench_cases(FakeConfig(sizes="1000x10")) == plan(False, "1000x10")  # the option wins


def test_bad_sizes_option_is_a_usage_error(monkeypatch):
    conf = _bench_conftest()
    monkeypatch.delenv("SINKLABEL_BENCH_SIZES", raising=False)
    with pytest.raises(pytest.UsageError, match=r"--bench-sizes.*got 'big'"):
        conf.bench_cases(FakeConfig(sizes="big"))


# -- the summary --------------------------------------------------------------------------------------
def _rows():
    size = (50000, 300)
    return [
        Row(size, "pot-sinkhorn", 16.0, 1, 1225, 9.5e-4, 0.004),
        Row(size, "numba", 0.5, 5, 69, 9.8e-4, 0.004),
        Row(size, "paper-loop", 20.0, 1, 1225, 9.99e-4, 0.004),
        Row(size, "torch-cuda", 0.02, 5, 70, 9.0e-4, 0.0001),
    ]


def _table(lines, title_part):
    """The data lines of the table under the title containing ``title_part``."""
    start = next(i for i, line in enumerate(lines) if title_part in line)
    body = []
    for line in lines[start + 3 :]:
        if not line.startswith("  ") or not line.strip():
            break
        body.append(re.split(r"\s{2,}", line.strip()))  # columns are two spaces apart
    return body


def test_summary_table_ratios_and_reads():
    lines = summary_lines(_rows(), 25, 1e-3, header="quick; test machine")
    assert lines[0] == "sinklabel benchmark summary: quick; test machine"
    body = _table(lines, "50,000 x 300 float32")
    names = [r[0] for r in body]  # fastest first
    assert names == [
        "sinklabel[torch, cuda]",
        "sinklabel[numba]",
        "POT sinkhorn (float64)",
        "paper loop (float64)",
    ]
    # time, speed-up = POT / this, iterations, reads/sweep = s / it / read, error, rounds
    assert body[0][1:] == ["0.020 s", "800.0x", "70", "2.86 (GPU read)", "9.00e-04", "5"]
    assert body[1][1:] == ["0.500 s", "32.0x", "69", "1.81", "9.80e-04", "5"]
    assert body[2][1:] == ["16.0 s", "1.0x", "1,225", "3.27", "9.50e-04", "1"]
    assert body[3][1:] == ["20.0 s", "0.8x", "1,225", "4.08", "9.99e-04", "1"]
    assert any("tol 0.001" in line and "lam 25" in line for line in lines)


def test_summary_without_pot_and_with_skips():
    rows = [r for r in _rows() if r.method != "pot-sinkhorn"]
    lines = summary_lines(rows, 25, 1e-3, skipped=[("50000x300-cupy", "cupy is not installed")])
    assert any("POT sinkhorn did not run" in line for line in lines)
    assert "  50000x300-cupy: cupy is not installed" in lines
    body = _table(lines, "50,000 x 300 float32")
    assert len(body) == 3 and all(r[2] == "-" for r in body)  # no speed-up column values


def test_summary_groups_sizes_smallest_first():
    rows = _rows() + [Row((20000, 100), "numba", 0.05, 5, 58, 9.6e-4, 0.0005)]
    lines = summary_lines(rows, 25, 1e-3)
    titles = [line for line in lines if line.endswith("tol 0.001:")]
    assert titles[0].startswith("20,000 x 100") and titles[1].startswith("50,000 x 300")
    small = _table(lines, "20,000 x 100")
    assert small == [["sinklabel[numba]", "0.050 s", "-", "58", "1.72", "9.60e-04", "5"]]


def test_summary_small_ratios_keep_two_digits():
    rows = _rows() + [Row((50000, 300), "pot-sinkhorn_log", 1000.0, 1, 1225, 9.5e-4, 0.004)]
    body = _table(summary_lines(rows, 25, 1e-3), "50,000 x 300 float32")
    assert body[-1][0] == "POT sinkhorn_log (float64)" and body[-1][2] == "0.016x"


def test_summary_with_no_rows():
    assert "no benchmark ran" in "\n".join(summary_lines([], 25, 1e-3))


def test_reads_per_sweep():
    assert Row((10, 2), "numba", 2.0, 1, 100, 1e-3, 0.01).reads_per_sweep == pytest.approx(2.0)
