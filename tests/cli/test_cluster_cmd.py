"""`aelab cluster` parses into ClusterConfig: same defaults, positional input."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from aelab.cli.main import main
from aelab.cluster.study import ClusterConfig
from tests.cluster.test_study import write_embed_run


def test_flags_are_the_config_fields_with_the_same_defaults():
    """jsonargparse's class arguments of ClusterConfig, with ``input`` positional."""
    from aelab.cli.main import build_parser

    ns = build_parser().parse_args(["cluster", "emb.npy"])
    for f in dataclasses.fields(ClusterConfig):
        if f.default is not dataclasses.MISSING:
            assert ns.cluster[f.name] == f.default, f.name
    assert ns.cluster.input == "emb.npy" and ns.cluster.device == "auto"


def test_cli_end_to_end(tmp_path):
    write_embed_run(tmp_path / "embed", sizes=(40, 20, 20))
    rc = main(["cluster", str(tmp_path / "embed"), "--out", str(tmp_path / "run"), "--classes", "c0,c1,c2",
               "--method", "course-softmax", "--alpha", "1.0", "--device", "cpu"])
    assert rc == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["method"] == "course-softmax" and np.isfinite(m["objective"])


def test_the_old_method_name_is_refused(tmp_path, capsys):
    write_embed_run(tmp_path / "embed", sizes=(40, 20, 20))
    assert main(["cluster", str(tmp_path / "embed"), "--method", "seed-softmax"]) == 2
    assert "--method must be one of" in capsys.readouterr().err


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aelab: error: input not found") and "\n" not in err
