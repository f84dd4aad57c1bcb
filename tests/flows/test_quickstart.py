"""The quickstart run end to end on the bundled digits (short)."""

import json

from flows.quickstart import main


def test_quickstart_trains_and_writes_heldout_errors(tmp_path):
    metrics = tmp_path / "out" / "metrics.json"
    result = main(["--epochs", "2", "--latent-dim", "5", "--metrics", str(metrics)])
    written = json.loads(metrics.read_text())
    assert written["heldout_mae"] == result
    assert 0 < result["abp"] < 0.5 and 0 < result["pca"] < 0.5
    assert [p.name for p in metrics.parent.iterdir()] == ["metrics.json"]
