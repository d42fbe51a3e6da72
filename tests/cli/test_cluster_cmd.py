"""`aelab cluster` parses into ClusterConfig: same defaults, positional input, old method name warns."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np

from aelab.cli.cluster_cmd import cluster
from aelab.cli.main import main
from aelab.cluster.study import ClusterConfig
from tests.cluster.test_study import write_embed_run


def test_flags_are_the_config_fields_with_the_same_defaults():
    sig = inspect.signature(cluster)
    fields = {f.name: f.default for f in dataclasses.fields(ClusterConfig)}
    assert sorted(sig.parameters) == sorted(fields) and list(sig.parameters)[0] == "input"  # the positional first
    for name, default in fields.items():
        expected = inspect.Parameter.empty if default is dataclasses.MISSING else default
        assert sig.parameters[name].default == expected


def test_cli_end_to_end_with_the_old_method_name(tmp_path, capsys):
    write_embed_run(tmp_path / "embed", sizes=(40, 20, 20))
    rc = main(["cluster", str(tmp_path / "embed"), "--out", str(tmp_path / "run"), "--classes", "c0,c1,c2",
               "--method", "seed-softmax", "--alpha", "1.0"])
    assert rc == 0
    assert "aelab: warning: method 'seed-softmax' is renamed 'course-softmax'" in capsys.readouterr().err
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["method"] == "course-softmax" and np.isfinite(m["objective"])


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["cluster", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aelab: error: input not found") and "\n" not in err
