"""`alcap experiment` on the tiny corpus: 3 methods x 2 seeds, tables checked against the runs."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from alcap.cli import main
from alcap.experiment import Experiment, load_experiment
from alcap.metrics.captioning import bootstrap_interval


def write_experiment(root, tmp_path):
    base = {"data": {"manifest": str(root / "corpus" / "manifest.jsonl"), "embeddings": str(root / "store"),
                     "max_caption_tokens": 48},
            "model": {"backbone": "tiny", "tokenizer_vocab_size": 400, "alcap": {"fusion_layers": [1, 2]}},
            "train": {"epochs": 1, "batch_size": 8, "optimizer": "adamw", "lr": 1e-3, "eval_num_beams": 1},
            "generation": {"num_beams": 2, "max_new_tokens": 16}}
    methods = {"bart": {"model.alcap.use_music": False, "data.embeddings": None},
               "bart-fusion": {"model.alcap.alpha": 0.0}, "alcap": {"model.alcap.alpha": 0.02}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny", "output_dir": str(tmp_path / "exp"), "base": base,
                                    "methods": methods}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def experiment(tiny_corpus, tmp_path_factory):
    """3 methods x 2 seeds on the tiny corpus, run once through the CLI; (experiment file, stdout)."""
    import contextlib
    import io

    tmp_path = tmp_path_factory.mktemp("experiment")
    path = write_experiment(tiny_corpus, tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["experiment", str(path), "--seeds", "1", "2", "--quiet"]) == 0
    return path, out.getvalue()


def test_experiment_trains_every_method_and_seed_and_writes_tables(experiment):
    path, out = experiment
    assert "| Method | ROUGE-1 | ROUGE-2 | ROUGE-L | METEOR |" in out and "| Method | P@1 | P@5 | P@10 |" in out
    exp = path.parent / "exp"
    results = json.loads((exp / "tables" / "results.json").read_text())
    assert list(results["methods"]) == ["bart", "bart-fusion", "alcap"] and results["seeds"] == [1, 2]
    for method, row in results["methods"].items():
        runs = [json.loads((exp / method / f"seed-{s}" / "best" / "eval-test" / "metrics.json").read_text())
                for s in (1, 2)]
        values = [r["rouge1_recall"] for r in runs]
        assert row["rouge1_recall"]["values"] == values
        assert row["rouge1_recall"]["mean"] == pytest.approx(np.mean(values))
        assert row["rouge1_recall"]["std"] == pytest.approx(np.std(values, ddof=1))
        # The interval is over test songs, of each song's score averaged over the seeds, as
        # evaluation stored it beside the caption.
        per_seed = [[json.loads(line)["scores"]["rouge1_recall"] for line in
                     (exp / method / f"seed-{s}" / "best" / "eval-test" / "predictions.jsonl").read_text().splitlines()]
                    for s in (1, 2)]
        assert row["rouge1_recall"]["ci95"] == pytest.approx(list(bootstrap_interval(np.mean(per_seed, axis=0))))
        low, high = row["rouge1_recall"]["ci95"]
        assert 0 <= low <= high <= 1
        for k in (1, 5, 10):
            assert row[f"recall@{k}"]["mean"] == pytest.approx(np.mean([r["retrieval"][f"recall@{k}"] for r in runs]))
    # The seeds gave different models (the seed reaches the initialisation).
    a = (exp / "alcap" / "seed-1" / "best" / "model.safetensors").read_bytes()
    assert a != (exp / "alcap" / "seed-2" / "best" / "model.safetensors").read_bytes()
    with open(exp / "tables" / "table1_captioning.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["Method", "ROUGE-1", "ROUGE-2", "ROUGE-L", "METEOR"] and [r[0] for r in rows[1:]] == \
        ["bart", "bart-fusion", "alcap"]
    for cell in rows[1][1:]:
        mean, rest = cell.split(" ± ")
        assert 0 <= float(mean) <= 100 and "[" in rest
    tex = (exp / "tables" / "table2_retrieval.tex").read_text()
    assert r"\begin{tabular}{lcccccc}" in tex and r"$\pm$" in tex and tex.count(r"\\") == 5  # + the chance row
    with open(exp / "tables" / "table2_retrieval.csv") as f:
        chance = dict(zip(*list(csv.reader(f))[::4]))  # the header and the last row
    songs = json.loads((exp / "alcap" / "seed-1" / "best" / "eval-test" / "metrics.json").read_text())["retrieval"]["songs"]
    assert chance["Method"] == "chance (random ranking)" and float(chance["R@1"]) == pytest.approx(100 / songs, abs=0.01)
    assert float(chance["P@5"]) == pytest.approx(100 * min(5, songs) / songs / 5, abs=0.01)

    # Rerunning skips the finished runs (nothing is retrained or re-evaluated).
    stamp = (exp / "bart" / "seed-1" / "best" / "eval-test" / "metrics.json").stat().st_mtime_ns
    assert main(["experiment", str(path), "--seeds", "1", "2", "--quiet"]) == 0
    assert (exp / "bart" / "seed-1" / "best" / "eval-test" / "metrics.json").stat().st_mtime_ns == stamp


def test_experiment_files_are_checked_before_training(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": {}, "methods": {"x": {"model.alcap.alfa": 1}}}))
    with pytest.raises(ValueError, match="unknown key 'alfa'"):
        load_experiment(bad)
    for name in ("si-full", "si-not-negative", "si-positive", "ncm"):
        exp = load_experiment(f"configs/{name}.yaml")
        assert list(exp.methods) == ["bart", "bart-fusion", "alcap"]
        alcap = exp.run_config("alcap", 2022)
        assert alcap.model.alcap.alpha == 0.02 and alcap.train.seed == 2022 and alcap.train.batch_size == 26
        assert alcap.model.alcap.fusion_layers == [4, 5] and alcap.train.optimizer == "adafactor"
        assert exp.run_config("bart-fusion", 2020).model.alcap.alpha == 0.0
        assert exp.run_config("bart", 2020).model.alcap.use_music is False


def test_running_some_methods_also_runs_the_stages_they_start_from():
    exp = load_experiment("configs/demo.yaml")
    exp.select(["alcap"])
    assert list(exp.methods) == ["text-pretrain", "alcap"] and exp.reported_methods() == ["alcap"]
    chain = Experiment("chain", Path("runs/x"), {}, {
        "a": {"model.alcap.use_music": False}, "b": {"model.backbone": "{output_dir}/a/seed-{seed}/best"},
        "c": {"model.backbone": "{output_dir}/b/seed-{seed}/best"}, "d": {}})
    chain.select(["c", "d"])
    assert list(chain.methods) == ["a", "b", "c", "d"] and chain.reported_methods() == ["c", "d"]
    with pytest.raises(ValueError, match="unknown method\\(s\\) zz; this experiment has a, b, c, d"):
        chain.select(["zz"])


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_attention_maps_skip_instrumentals_and_refuse_one_named(experiment, tmp_path):
    """An instrumental has no lyric tokens, so no attention map: `--songs N` takes the first N
    songs with lyrics (the demo's test split starts with one; its figure crashed on it)."""
    import shutil

    import yaml

    path, _ = experiment
    model = tmp_path / "alcap"
    shutil.copytree(path.parent / "exp" / "alcap" / "seed-1" / "best", model)
    run = yaml.safe_load((model / "run_config.yaml").read_text())
    rows = [json.loads(line) for line in Path(run["data"]["manifest"]).read_text().splitlines()]
    first_test = next(r["song_id"] for r in rows if r.get("split") == "test")
    for r in rows:
        if r["song_id"] == first_test:
            r["lyrics"] = ""
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run["data"]["manifest"] = str(manifest)
    (model / "run_config.yaml").write_text(yaml.safe_dump(run, sort_keys=False))

    assert main(["attention", str(model), "--songs", "2", "--out", str(tmp_path / "attention.png")]) == 0
    from alcap.figures import inspect_model

    shown = inspect_model(model, songs=2, with_lyrics=True)
    with_lyrics = list(dict.fromkeys(r["song_id"] for r in rows if r.get("split") == "test" and r["lyrics"]))
    assert shown.song_ids == with_lyrics[:2] and first_test not in shown.song_ids and all(map(len, shown.tokens))
    with pytest.raises(ValueError, match=f"song\\(s\\) {first_test} have no lyrics"):
        inspect_model(model, song_ids=[first_test], with_lyrics=True)


def test_alpha_sweep_writes_csv_and_figures(tiny_corpus, tmp_path, capsys):
    path = write_experiment(tiny_corpus, tmp_path)
    assert main(["sweep", str(path), "--alpha", "0", "0.02", "2", "--seeds", "3", "--quiet"]) == 0
    sweep = tmp_path / "exp" / "sweep"
    with open(sweep / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["alpha"]) for r in rows] == [0.0, 0.02, 2.0]
    for row in rows:
        metrics = json.loads((sweep / f"alpha-{float(row['alpha']):g}" / "seed-3" / "best" / "eval-test" /
                              "metrics.json").read_text())
        assert float(row["rougeL_recall"]) == pytest.approx(metrics["rougeL_recall"])
        assert float(row["recall@5"]) == pytest.approx(metrics["retrieval"]["recall@5"])
    from alcap.model.captioner import AlcapModel

    assert AlcapModel.from_pretrained(sweep / "alpha-2" / "seed-3" / "best").config.alpha == 2.0
    for name in ("sweep_captioning.png", "sweep_retrieval.png"):
        assert png_size(sweep / name) == (840, 504) and (sweep / name).stat().st_size > 20_000
    assert "sweep_captioning.png" in capsys.readouterr().out


def test_attention_alignment_and_report_of_an_experiment(experiment, capsys):
    path, _ = experiment
    exp = path.parent / "exp"
    models = [str(exp / m / "seed-1" / "best") for m in ("bart-fusion", "alcap")]
    assert main(["attention", *models, "--songs", "2", "--out", str(exp / "attention.png")]) == 0
    width, height = png_size(exp / "attention.png")
    assert width > 600 and height > 600  # 2 rows (models) x 2 columns (songs)

    from alcap.figures import inspect_model

    inspected = inspect_model(models[1], songs=2)
    for tokens, weights in zip(inspected.tokens, inspected.attentions):
        assert weights.shape[0] == len(tokens) and weights.shape[1] > 1
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)  # each token's attention is a distribution

    assert main(["alignment", *models, "--out", str(exp / "alignment")]) == 0
    assert "music->lyrics" in capsys.readouterr().out
    saved = np.load(exp / "alignment" / "alcap_seed-1.npz")
    zm, zt = saved["z_music"], saved["z_lyrics"]
    sim = (zm / np.linalg.norm(zm, axis=1, keepdims=True)) @ (zt / np.linalg.norm(zt, axis=1, keepdims=True)).T
    np.testing.assert_allclose(saved["similarity"], sim, atol=1e-5)
    numbers = json.loads((exp / "alignment" / "alcap_seed-1.json").read_text())
    better = (sim > np.diag(sim)[:, None]).sum(1)
    assert numbers["recall@1"] == pytest.approx(float(np.mean(better == 0)), abs=1e-6)
    assert numbers["chance_recall@1"] == pytest.approx(1 / len(sim))
    assert png_size(exp / "alignment" / "alignment.png")[0] > 800
    with pytest.raises(ValueError, match="lyrics-only"):
        inspect_model(exp / "bart" / "seed-1" / "best")

    captions = exp / "captions.jsonl"
    captions.write_text(json.dumps({"file": "/songs/a.wav", "lyrics": "home", "caption": "a song about home"}) + "\n" +
                        json.dumps({"file": "/songs/b.wav", "lyrics": "", "caption": "an instrumental"}) + "\n")
    assert main(["report", str(exp), "--title", "tiny experiment", "--captions", str(captions)]) == 0
    report = (exp / "report.md").read_text()
    assert "2 songs; 1 of them captioned without lyrics (marked)." in report
    assert "- `b.wav` *(no lyrics: from the music alone)*: an instrumental" in report and "- `a.wav`: a song" in report
    songs = json.loads((exp / "alcap" / "seed-1" / "best" / "eval-test" / "metrics.json").read_text())["retrieval"]["songs"]
    assert f"| chance (random ranking) | {1 / songs:.4f} |" in report  # recall@1 of a random ranking: 1 / songs
    assert report.count("How often the caption states") <= 1 and (
        "How often the caption states" not in report or "| chance (most common value) |" in report)
    for text in ("## Table 1: captioning", "## Table 2: text-to-music retrieval", "| alcap seed-2 |",
                 "![fusion attention](attention.png)", "## Alignment head", "| alcap seed-1 |", "Sample captions"):
        assert text in report, text
    assert report.index("| bart seed-1 |") < report.index("| bart-fusion seed-1 |") < report.index("| alcap seed-1 |")


def test_methods_can_start_from_a_stage_and_the_sweep_shares_it(tiny_corpus, tmp_path):
    path = write_experiment(tiny_corpus, tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["methods"] = {"pretrain": {"report": False, "model.alcap.use_music": False, "data.embeddings": None},
                       "alcap": {"model.backbone": "{output_dir}/pretrain/seed-{seed}/best"}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["sweep", str(path), "--alpha", "0", "0.5", "--seeds", "4", "--quiet"]) == 0
    exp = tmp_path / "exp"
    assert (exp / "pretrain" / "seed-4" / "best").is_dir() and not (exp / "sweep" / "pretrain").exists()
    assert not (exp / "pretrain" / "seed-4" / "best" / "eval-test").exists()  # a stage is not evaluated
    from alcap.config import load_run_config

    run = load_run_config(exp / "sweep" / "alpha-0.5" / "seed-4" / "best")
    assert run.model.backbone == str(exp / "pretrain" / "seed-4" / "best")
    # The fine-tuned model started from the stage's weights: its tokenizer is the stage's.
    assert (exp / "sweep" / "alpha-0.5" / "seed-4" / "tokenizer" / "tokenizer.json").read_text() == \
        (exp / "pretrain" / "seed-4" / "best" / "tokenizer.json").read_text()
    # (That the weights come from such a directory exactly is tests/model/test_backbone.py's job.)
    assert not (exp / "tables").exists()  # the main experiment's tables are not touched by a sweep


def staged_experiment(tiny_corpus, tmp_path, name: str) -> Experiment:
    path = write_experiment(tiny_corpus, tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["output_dir"] = str(tmp_path / name)
    start = "{output_dir}/pretrain/seed-{seed}/best"
    spec["methods"] = {"pretrain": {"report": False, "model.alcap.use_music": False, "data.embeddings": None},
                       "bart": {"model.backbone": start, "model.alcap.use_music": False, "data.embeddings": None},
                       "alcap": {"model.backbone": start}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_experiment(path)


def test_parallel_jobs_train_the_same_models_as_one_at_a_time(tiny_corpus, tmp_path, capfd):
    import logging

    import torch

    from alcap.experiment import run_all

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get 1 thread each; same arithmetic, same bits
    try:
        one = staged_experiment(tiny_corpus, tmp_path, "one")
        run_all(one, [1], progress=False)
    finally:
        torch.set_num_threads(threads)
    many = staged_experiment(tiny_corpus, tmp_path, "many")
    package = logging.getLogger("alcap")
    level = package.level
    package.setLevel(logging.INFO)  # as the CLI does; the workers take the level over
    try:
        capfd.readouterr()
        run_all(many, [1], progress=False, jobs=2, threads_per_job=1)
    finally:
        package.setLevel(level)
    err = capfd.readouterr().err
    assert "alcap: alcap seed 1: training into" in err  # the workers' own log lines
    assert "Saving current state" not in err  # but not every library's INFO lines
    from safetensors.torch import load_file

    for method in ("pretrain", "bart", "alcap"):  # (the files' headers list tied weights in hash order)
        weights = [load_file(e.run_dir(method, 1) / "best" / "model.safetensors") for e in (one, many)]
        assert weights[0].keys() == weights[1].keys(), method
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), method
    for method in ("bart", "alcap"):  # evaluated in the worker, as one at a time does
        metrics = [json.loads((e.run_dir(method, 1) / "best" / "eval-test" / "metrics.json").read_text())
                   for e in (one, many)]
        assert metrics[0]["rouge1_recall"] == metrics[1]["rouge1_recall"]
    config = json.loads((many.run_dir("alcap", 1) / "environment.jsonl").read_text().splitlines()[0])
    assert config["torch_threads"] == 1


def test_a_failed_parallel_run_costs_only_the_runs_that_start_from_it(tiny_corpus, tmp_path):
    from alcap.experiment import run_all

    exp = staged_experiment(tiny_corpus, tmp_path, "failing")
    exp.methods["pretrain"]["data.manifest"] = str(tmp_path / "missing.jsonl")  # fails when it trains
    exp.methods["alone"] = {"model.alcap.alpha": 0.0}
    with pytest.raises(Exception, match="missing.jsonl"):
        run_all(exp, [1], progress=False, jobs=2, threads_per_job=1)
    assert (exp.run_dir("alone", 1) / "best" / "eval-test" / "metrics.json").exists()
    for method in ("pretrain", "bart", "alcap"):
        assert not (exp.run_dir(method, 1) / "best").exists(), method


def test_an_experiment_of_stages_only_trains_them_and_writes_no_tables(tiny_corpus, tmp_path, capsys):
    exp = staged_experiment(tiny_corpus, tmp_path, "stages")
    path = tmp_path / "exp.yaml"
    assert main(["experiment", str(path), "--methods", "pretrain", "--seeds", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"trained {exp.run_dir('pretrain', 3)} (a stage other methods start from" in out
    assert (exp.run_dir("pretrain", 3) / "best").is_dir() and not (exp.output_dir / "tables").exists()
    assert not (exp.output_dir / "bart").exists()


def test_each_method_keeps_its_colour_in_every_figure():
    from alcap.style import METHOD_COLOURS, method_colour

    assert method_colour("alcap seed-2020") == method_colour("alcap") == METHOD_COLOURS["alcap"]
    assert len({method_colour(m) for m in ("text-pretrain", "bart", "bart-fusion", "alcap")}) == 4
    assert method_colour("alpha-0.1") == method_colour("alpha-0.1 seed-3")  # any other method: a fixed colour too
