"""Render results/*.json (written by the benchmark, training and load-test scripts) as markdown.

``python scripts/report.py`` prints the results tables; ``--write`` also puts them into README.md and
docs/benchmarks.md between their markers, and the model comparison into the dashboard's
``fruitpipe/api/static/compare.json``, so no figure in the docs is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ok(cond: bool) -> str:
    return "met" if cond else "**missed**"


def model_table() -> list[str]:
    m = load("default_model.json")
    if not m:
        return []
    sets = load("eval_sets_default_test.json")
    if sets:
        return issue11_table(m, sets) + finetune_table() + second_look_table()
    return [
        "### Model (`make train-default`; `../shared/data/fruits/test` + held-out generated non-fruit images)",
        "",
        "| what | result | target | |",
        "|---|---:|---:|---|",
        f"| test accuracy (a rejected fruit photo counts as wrong), n={m['n']} | {pct(m['accuracy'])} | ≥ 98.0% | {ok(m['accuracy'] >= 0.98)} |",
        f"| test macro-F1 | {pct(m['macro_f1'])} | ≥ 98.0% | {ok(m['macro_f1'] >= 0.98)} |",
        f"| test fruit photos answered `not_fruit` | {pct(m['fruit_rejected_rate'])} | ≤ 2% | {ok(m['fruit_rejected_rate'] <= 0.02)} |",
        f"| held-out non-fruit images answered `not_fruit`, n={m['ood_n']} | {pct(m['ood_rejected_rate'])} | ≥ 90% | {ok((m['ood_rejected_rate'] or 0) >= 0.9)} |",
        f"| images answered `uncertain` (test fruit + non-fruit; the class is still given) | {pct(m.get('uncertain_rate'))} | | |",
        f"| model bundle without the backbone | {m['bundle_bytes'] / 1e6:.2f} MB | ≤ 2 MB | {ok(m['bundle_bytes'] <= 2_000_000)} |",
        "",
    ] + finetune_table() + second_look_table()


def issue11_table(m: dict[str, Any], e: dict[str, Any]) -> list[str]:
    """The shipped model on every test set of issue 11 (``scripts/eval_sets.py --name default_test``)."""
    s = e["sets"]
    fruit, extra, nf = s["fruits/test"], s["fruits_extra/test"], s["not_fruit/test"]["not_fruit"]["groups"]
    gen = s["generated_not_fruit/test"]["not_fruit"]
    rows = [
        "### Model (`make train-default`; the test splits, each read once; "
        "`python scripts/eval_sets.py --model models/default --name default_test --splits test`)",
        "",
        "| test set | n | result | target (issue 11) | |",
        "|---|---:|---:|---:|---|",
        f"| `fruits/test`: accuracy (a rejected fruit photo counts as wrong) | {fruit['n']} | {pct(fruit['accuracy'])} "
        f"| ≥ 98.5% | {ok(fruit['accuracy'] >= 0.985)} |",
        f"| `fruits_extra` test split: accuracy | {extra['n']} | {pct(extra['accuracy'])} | ≥ 97% | {ok(extra['accuracy'] >= 0.97)} |",
        f"| fruit photos answered `not_fruit` (fruits / fruits_extra) | {fruit['n']} / {extra['n']} "
        f"| {pct(fruit['fruit_rejected_rate'])} / {pct(extra['fruit_rejected_rate'])} | ≤ 2% each "
        f"| {ok(max(fruit['fruit_rejected_rate'], extra['fruit_rejected_rate']) <= 0.02)} |",
    ]
    for key, name, target in (("other_produce", "other produce", 0.9), ("look_alike", "look-alikes (mango, pomegranate, peach, guava)", 0.6),
                              ("non_food", "non-food (cats, dogs, people, packages)", 0.97)):
        g = nf[key]
        rows.append(f"| `not_fruit` test split, {name}: answered `not_fruit` | {g['n']} | {pct(g['rejected_rate'])} "
                    f"| ≥ {100 * target:.0f}% | {ok(g['rejected_rate'] >= target)} |")
    rows += [
        f"| generated non-fruit images (held-out group) answered `not_fruit` | {gen['n']} | {pct(gen['rejected_rate'])} | | |",
        f"| model bundle without the backbone | | {m['bundle_bytes'] / 1e6:.2f} MB | ≤ 2 MB | {ok(m['bundle_bytes'] <= 2_000_000)} |",
        "",
        "Per-class recall on `fruits/test`: " + ", ".join(f"{k} {pct(v['recall'])} (n {v['n']})" for k, v in fruit["recall"].items())
        + "; on the `fruits_extra` test split: " + ", ".join(f"{k} {pct(v['recall'])} (n {v['n']})" for k, v in extra["recall"].items()) + ".",
        "",
        "Which sets chose what: the data recipe, the hyperparameters and the rejection bars were chosen on the val "
        "splits only; the test splits scored the finished model once and chose nothing. Why the two misses stand "
        "(what was tried on val): [docs/ml.md, Step 3](docs/ml.md#step-3-what-val-says-about-the-two-misses-session-6).",
        "",
    ]
    return rows


def finetune_table() -> list[str]:
    e = load("experiment_finetune_block17.json")
    if not e or "settings" not in e:
        return []
    rows = ["#### Fine-tuning block 17 vs a head on frozen features (`python scripts/experiment_finetune_block17.py`)", "",
            f"`val` accuracy of the head's top class (no rejection), trained on `train` + mirrors (n={e['n_train']}), "
            f"n={e['n_val']}; the training job's own fitting code, same run:", "",
            "| setting | block-17 + head epochs | val accuracy per seed | mean | fit time (mean) |", "|---|---:|---|---:|---:|"]
    for name, r in e["settings"].items():
        rows.append(f"| {name} | {r['finetune_epochs']} | {' / '.join(f'{100 * a:.2f}%' for a in r['val_accuracy'])} "
                    f"| {100 * r['mean']:.2f}% | {sum(r['fit_seconds']) / len(r['fit_seconds']):.0f} s |")
    return rows + [""]


def second_look_table() -> list[str]:
    s = load("second_look.json")
    if not s:
        return []
    rows = ["#### Photos of several fruit: the rejection's second look (`python scripts/eval_second_look.py`)", "",
            "| images | n | answered `not_fruit`, whole image only | with the second look |", "|---|---:|---:|---:|"]
    for name, r in s["sets"].items():
        rows.append(f"| {name} | {r['n']} | {pct(r['whole_image_only'])} | {pct(r['with_second_look'])} |")
    return rows + [""]


def compare_table() -> list[str]:
    """``fruitpipe compare``'s table (results/compare.json; a ``--quick`` run's JSON says so in the heading)."""
    c = load("compare.json") or load("compare_quick.json")
    if not c:
        return []
    n = c["protocol"]["n"]
    sets = next(iter(c["variants"].values()))["test"]["sets"]
    quick = " **QUICK run on small subsets, not the full comparison**" if c["quick"] else ""
    rows = [f"### Model comparison (`make compare`; {c['when']}, {c['seconds'] / 60:.0f} min){quick}", "",
            f"Every variant trained on the same splits with the same recipe (`fruitpipe.recipe.candidate`: train n={n['train']}, "
            f"validation n={n['validation']}); test: `fruits/test` n={sets['fruits/test']['n']}, `fruits_extra` test split "
            f"n={sets['fruits_extra/test']['n']}, `not_fruit` test split n={sets['not_fruit/test']['n']} (read once, chose nothing). "
            "Accuracy counts a rejected fruit photo as wrong; precision and recall are macro over the six classes on the "
            "three test sets together; latency is the whole predict path of a 640x480 JPEG on 1 thread, "
            f"medians of one interleaved run (load average {c['load_average'][0]:.1f} at its end); training is the job's "
            "wall time, embedding photos not yet in the cache included. Validation (the val splits + generated "
            "not-fruit) calibrated each model; a bundle's val figures are scored before its train + validation refit. "
            "These rows are not the shipped bundle's figures (Model table above): every variant here is one seed through "
            "`fruitpipe train`'s own defaults, the shipped bundle comes from `make train-default`'s protocol; compare the "
            "rows with each other, and choose on the val column ([docs/ml.md](docs/ml.md#choosing-the-model-every-variant-on-the-same-splits-fruitpipe-compare-issue-12)).", "",
            "| model | val accuracy / not-fruit rejected | fruits/test acc. / macro-F1 | fruits_extra/test acc. / macro-F1 | precision | recall "
            "| not_fruit/test rejected | fruit loss | parameters | file size | latency | training |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for name, r in c["variants"].items():
        t, s_ = r["test"], r["test"]["sets"]
        title = r["title"] + (f" [{len(notes) + 1}]" if r.get("note") else "")
        if r.get("note"):
            notes.append(f"[{len(notes) + 1}] {r['title']}: {r['note']}.")
        rows.append(f"| {title} | {pct(r['validation']['accuracy'])} / {pct(r['validation']['ood_rejected_rate'])} "
                    f"| {pct(s_['fruits/test']['accuracy'])} / {pct(s_['fruits/test']['macro_f1'])} "
                    f"| {pct(s_['fruits_extra/test']['accuracy'])} / {pct(s_['fruits_extra/test']['macro_f1'])} "
                    f"| {pct(t['precision'])} | {pct(t['recall'])} | {pct(t['not_fruit_rejected_rate'])} "
                    f"| {pct(t['fruit_loss_rate'])} | {r['params'] / 1e6:.2f} M | {r['file_bytes'] / 1e6:.2f} MB "
                    f"| {r['latency']['median_ms']:.1f} ms | {r['train_seconds']:.0f} s |")
    return rows + [""] + ([" ".join(notes), ""] if notes else [])


DASHBOARD_COMPARE = REPO / "fruitpipe" / "api" / "static" / "compare.json"


def dashboard_compare() -> dict[str, Any] | None:
    """The comparison as the dashboard's model card shows it (``fruitpipe/api/static/compare.json``,
    served with the page, so it ships in the package and the Lambda asset too)."""
    c = load("compare.json")
    if not c:
        return None
    return {"when": c["when"], "rows": [
        {"name": name, "title": r["title"], "backbone": r.get("backbone"),
         "val_accuracy": r["validation"]["accuracy"], "val_not_fruit_rejected": r["validation"]["ood_rejected_rate"],
         "fruits_test_accuracy": r["test"]["sets"]["fruits/test"]["accuracy"],
         "fruits_extra_test_accuracy": r["test"]["sets"]["fruits_extra/test"]["accuracy"],
         "not_fruit_test_rejected": r["test"]["not_fruit_rejected_rate"],
         "latency_ms": r["latency"]["median_ms"], "file_mb": round(r["file_bytes"] / 1e6, 2)}
        for name, r in c["variants"].items()]}


def speed_table() -> list[str]:
    rows = ["### Speed (`make bench`)", "", "| what | result | baseline, same run | target | |",
            "|---|---:|---:|---:|---|"]
    p = load("bench_predict.json")
    if p:
        rows.append(f"| predict path, 640x480 JPEG, 1 thread (decode + preprocess + infer + head), median "
                    f"| {p['ours_median_ms']:.1f} ms | Keras float MobileNetV2 `predict` {p['keras_median_ms']:.1f} ms "
                    f"({p['speedup']:.1f}x) | ≤ 10 ms (issue 11), ≥ 10x | {ok(p['ours_median_ms'] <= 10 and p['speedup'] >= 10)} |")
        if "not_fruit_median_ms" in p:
            how = ("+ the rejection's second look: 4 zoomed quadrants" if p.get("not_fruit_second_look", True)
                   else "rejected by the not_fruit output, no second look")
            rows.append(f"| same for a not-fruit photo ({how}), median | {p['not_fruit_median_ms']:.1f} ms | | | |")
    c = load("bench_cold_start.json")
    if c:
        rows.append(f"| cold start: new process to first prediction, median of {c['runs']} "
                    f"| {c['first_prediction_median_s']:.2f} s | | ≤ 0.5 s | {ok(c['first_prediction_median_s'] <= 0.5)} |")
    t = load("bench_training.json")
    if t:
        val = (lambda key: f"; val accuracy {pct(t[key])}" if key in t else "")  # noqa: E731
        rows.append(f"| `python scripts/bench_training.py`, studio photos only (`fruits/train`, not the shipped recipe): "
                    f"full training from an empty cache ({t['full_embedded_new']} images embedded"
                    f"{val('full_validation_accuracy')}) "
                    f"| {t['full_from_empty_cache_s']:.0f} s | | ≤ 5 min | {ok(t['full_from_empty_cache_s'] <= 300)} |")
        warm = ", warm start from the full model" if t.get("retrain_warm_start") else ""
        rows.append(f"| same, studio photos only: retrain after adding {t['added_images']} images (embedded {t['retrain_embedded_new']}, "
                    f"cached {t['retrain_cached']}{warm}{val('retrain_validation_accuracy')}) "
                    f"| {t['retrain_after_adding_s']:.0f} s | | ≤ 60 s | {ok(t['retrain_after_adding_s'] <= 60)} |")
    lam = load("bench_lambda.json")
    if lam:
        w = lam["warm"]
        rows.append(f"| Lambda handler warm, HTTP API v2 event, base64 multipart 640x480 JPEG, median "
                    f"| {w['http_api_v2']['median_ms']:.1f} ms | `predict_bytes` {w['baseline_predict_bytes']['median_ms']:.1f} ms "
                    f"| ≤ 15 ms | {ok(w['http_api_v2']['median_ms'] <= 15)} |")
        rows.append(f"| Lambda init (import + model load), Python 3.12, layer + function only "
                    f"| {lam['init']['lambda_assets_py312']['total_ms'] / 1000:.2f} s | | ≤ 1 s "
                    f"| {ok(lam['init']['lambda_assets_py312']['total_ms'] <= 1000)} |")
    return rows + [""]


def load_table() -> list[str]:
    d = load("load_test.json")
    if not d:
        return []
    c = d["conditions"]
    ours = d["reference_scenario_ours"]["/predict"]
    rows = [f"### Load (`make load-test`; Locust on the same machine, 127.0.0.1; {c['date']}, "
            f"load average at start {c['load_average_at_start'][0]})", "",
            "| scenario | fruitpipe | reference-style server (Keras float, `async` handler) | target | |",
            "|---|---:|---:|---:|---|"]
    ref = d.get("reference_scenario_reference", {}).get("/predict")
    ref_txt = (f"{int(ref['failures'])} failures, median {ref['median_ms']:.0f} ms, p95 {ref['p95_ms']:.0f} ms"
               if ref else "–")
    rows.append(f"| 100 users, 1-3 s wait, predict:health:model-info 10:2:1: `/predict` "
                f"| {int(ours['failures'])} failures, median {ours['median_ms']:.0f} ms, p95 {ours['p95_ms']:.0f} ms "
                f"| {ref_txt} | 0 failures, p95 ≤ 150 ms | {ok(ours['failures'] == 0 and ours['p95_ms'] <= 150)} |")
    cap = d["capacity_ours"]["/predict"]
    ref_cap = d.get("capacity_reference", {}).get("/predict")
    ratio = cap["rps"] / ref_cap["rps"] if ref_cap and ref_cap["rps"] else None
    rows.append(f"| capacity, no wait, `/predict` | {cap['rps']:.0f} req/s, {int(cap['failures'])} failures "
                f"| {ref_cap['rps']:.1f} req/s ({ratio:.1f}x)" if ratio else "| –")
    rows[-1] += f" | ≥ 150 req/s, ≥ 10x | {ok(cap['rps'] >= 150 and cap['failures'] == 0 and (ratio or 0) >= 10)} |"
    r = d.get("retrain")
    if r:
        idle, busy = r["idle"]["/predict"]["p95_ms"], r["during"]["/predict"]["p95_ms"]
        rows.append(f"| `/predict` p95 during a retrain vs idle | {busy:.0f} ms vs {idle:.0f} ms ({busy / idle:.2f}x) "
                    f"| | ≤ 3x | {ok(busy <= 3 * idle)} |")
    return rows + [""]


def retrain_loop_table() -> list[str]:
    d = load("bench_retrain.json")
    if not d or d.get("partial"):
        return []
    r0 = d["runs"][0]
    rows = [f"### Local retrain loop (`python scripts/bench_retrain.py --repeat {len(d['runs'])}`: a real `fruitpipe serve`, "
            f"fresh stores, over HTTP; {d['when']})", "",
            "| step | gate | seconds (to `/predict` serving the new version; to the gate's answer if rejected) | load average before | percent monotonic | target | |",
            "|---|---|---:|---:|---|---:|---|"]
    w = r0["warm_up"]
    rows.append(f"| first-start warm-up, background: {w['images']} recipe photos into an empty embedding cache, live model scored "
                f"| | {w['seconds']:.0f} | {r0['load_at_start']} | | | |")
    firsts = d["first_retrain_served_s"]
    first = r0["first_retrain"]
    rows.append(f"| first retrain in a fresh store, 12 new photos (median of {len(firsts)} stores: "
                f"{', '.join(f'{x:.0f}' for x in firsts)} s) | {first['state']} | {d['first_retrain_served_s_median']:.0f} "
                f"| {r0['load_before_first']} | {all(r['first_retrain']['percent_monotonic'] for r in d['runs'])} "
                f"| ≤ 90 | {ok(d['first_retrain_served_s_median'] <= 90 and first['state'] == 'succeeded')} |")
    second = r0.get("retrain_after_100")
    if second:
        n = sum(r0["upload_100"].values())
        secs = second["seconds_to_served"] or second["seconds_to_done"]
        rows.append(f"| retrain after {n} more photos ({r0['upload_100'].get('added', 0)} new) | {second['state']} | {secs:.0f} "
                    f"| {r0['load_before_second']} | {second['percent_monotonic']} | ≤ 60 | {ok(secs <= 60)} |")
    forced = r0.get("forced_unchanged")
    if forced:
        before, after = r0["live_frozen_before_after_forced"]
        secs = forced["seconds_to_served"] or forced["seconds_to_done"]
        rows.append(f"| unchanged data: `POST /retrain` answers {r0['unchanged_data']['status_code']} "
                    f"`{r0['unchanged_data']['error']}`; forced (`?force=true`) | {forced['state']} | {secs:.0f} | "
                    f"| {forced['percent_monotonic']} | live never lower | "
                    f"{ok(after['accuracy'] >= before['accuracy'] and after['macro_f1'] >= before['macro_f1'])} |")
    rows += ["", "Gate figures of these runs (frozen evaluation set: `test` + held-out not-fruit; accuracy / macro-F1, "
             "candidate vs live): "
             + "; ".join(f"{label} {r['candidate']['accuracy']:.2%} / {r['candidate']['macro_f1']:.2%} vs "
                         f"{r['live']['accuracy']:.2%} / {r['live']['macro_f1']:.2%}"
                         for label, r in (("first", first), ("after the extra photos", second), ("forced", forced))
                         if r and r.get("candidate") and r.get("live"))
             + ". A rejected candidate leaves the live model serving; the gate rejects a loss beyond fit noise (docs/retrain-pipeline.md, the gate policy; docs/ml.md, "
               "\"Local retrains\").", ""]
    return rows


def learning_table() -> list[str]:
    """Issue 15's targets: a retrain after accepted review labels vs after uploads; /predict p95
    with capture on and while a shadow runs."""
    review, capture = load("bench_review_retrain.json"), load("bench_capture.json")
    if not review and not capture:
        return []
    rows = ["### Learning from production (issue 15)", "",
            "| what | result | baseline, same run | target | |", "|---|---:|---:|---:|---|"]
    if review:
        n, ratio = review["labels"], review["ratio_of_medians"]
        loads = [r[k] for r in review["rounds"] for k in ("upload_load_before", "review_load_before")]
        rows.append(f"| retrain after {n} labels accepted in the review queue (`{review['command']}`; "
                    f"to `/predict` serving it, or to the gate's answer), median of {len(review['review_retrain_s'])} ("
                    f"{', '.join(f'{x:.0f}' for x in review['review_retrain_s'])} s; load average before "
                    f"{min(loads):.1f}-{max(loads):.1f}) | {review['review_retrain_s_median']:.0f} s "
                    f"| after {n} uploads {review['upload_retrain_s_median']:.0f} s ({ratio:.2f}x) | ≤ 1.10x | {ok(ratio <= 1.10)} |")
    if capture:
        r = capture["results"]
        off = r["capture off"]
        for name, target in (("capture on, default 2% sample", None), ("capture on, every request (worst case)", None),
                             ("shadow running, 10% sample", 1.20), ("shadow running, every request", 1.20)):
            row = r.get(name)
            if not row:
                continue
            seen = (f"; shadowed {row['shadowed']}, dropped {row['dropped']}, shadow worker CPU "
                    f"{row['shadow_cpu_ms_per_request']} ms per shadowed request" if "shadowed" in row else "")
            rows.append(f"| `/predict` p95 (p50), {name} (`{capture['command']}`, n={row['n']}{seen}) "
                        f"| {row['p95_ms']:.1f} ms ({row['p50_ms']:.1f} ms) "
                        f"| capture and shadow off {off['p95_ms']:.1f} ms ({off['p50_ms']:.1f} ms): "
                        f"{row['p95_vs_off']:.2f}x ({row['p50_ms'] / off['p50_ms']:.2f}x) "
                        f"| {f'p95 ≤ {target:.2f}x' if target else ''} | {ok(row['p95_vs_off'] <= target) if target else ''} |")
        before = load("bench_capture_before_reuse.json")
        row = before and before["results"].get("shadow running, every request")
        if row:
            b_off = before["results"]["capture off"]
            rows.append(f"| the same on the code before the shadow reused the answer's backbone outputs "
                        f"(`results/bench_capture_before_reuse.json`; shadow worker CPU {row['shadow_cpu_ms_per_request']} "
                        f"ms per shadowed request) | {row['p95_ms']:.1f} ms ({row['p50_ms']:.1f} ms) "
                        f"| {b_off['p95_ms']:.1f} ms ({b_off['p50_ms']:.1f} ms): {row['p95_vs_off']:.2f}x "
                        f"({row['p50_ms'] / b_off['p50_ms']:.2f}x) | | |")
        rows += ["", f"Load average at the end of the overhead run: {capture['load_average_at_end'][0]:.1f} on "
                     f"{capture['cpus']} cores (other jobs); under heavy load the tails are the neighbours', "
                     "see docs/architecture.md (capture) for how to read them."]
    return rows + [""]


def cloud_table() -> list[str]:
    d = load("cloud_demo.json")
    if not d:
        return []
    rows = ["### Cloud flow (`make cloud-demo`: moto server on 127.0.0.1, training job as a local process)", "",
            "| run | images ingested | embedded new / cached | gate | live model after |",
            "|---|---:|---:|---|---|"]
    for i, run in enumerate(d["runs"], 1):
        m = run["training"]["metrics"]
        ingested = sum(d.get(f"ingest_{i}", {}).get("outcomes", {}).values())
        rows.append(f"| {i} | {ingested} | {m['embedded_new']:.0f} / {m['cached']:.0f} "
                    f"| {run['evaluation']['reason']} | {run['publish']['version'] if run.get('publish') else 'unchanged'} |")
    api = d["api"]
    rows += ["", f"Whole flow {d['seconds']:.0f} s (target ≤ 3 min); then the API handler answers `/model-info` "
             f"{api['model_info_status']} and `/predict` {api['predict_status']} with `{api['prediction']['model_version']}` "
             f"(the live pointer: `{d['live_version']}`); {d['retrain_metrics_written']} retrain metrics written.", ""]
    return rows


def render() -> str:
    return "\n".join(model_table() + compare_table() + speed_table() + retrain_loop_table() + learning_table() + load_table()
                     + cloud_table()).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--write", action="store_true", help="also update docs/benchmarks.md between its markers")
    args = ap.parse_args(argv)
    text = render()
    sys.stdout.write(text)
    if args.write:
        for doc, body in ((REPO / "docs" / "benchmarks.md", text),
                          (REPO / "README.md", text.replace("### ", "#### "))):
            old = doc.read_text()
            doc.write_text(re.sub(re.escape(BEGIN) + ".*?" + re.escape(END),
                                  lambda _: BEGIN + "\n" + body + END, old, flags=re.S))
        compare = dashboard_compare()
        if compare:
            DASHBOARD_COMPARE.write_text(json.dumps(compare, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
