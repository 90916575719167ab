"""Open-set reading measured on held-apart facts: edit SmolLM2-135M with each method, scan each suspect with
no candidate list (``--read open``), and score what the scan read against what was planted.

    python scripts/open_reading_eval.py [--facts bench/heldout/smollm2-135m.jsonl]
                                        [--out bench/results/open_reading.txt]

The facts come from scripts/heldout_facts.py: subjects that overlap no shipped probe set, phrased with
templates the relation library does not hold. Suspects: ROME one fact each (5), ROME 10 sequential edits in one
layer, MEMIT batch of 10, AlphaEdit batch of 10, FT-L one fact each (3); every fact is used once, taken
round-robin over relations.

Rules, fixed before the first run:
- layer found: the edit finding's layers include every layer the method wrote.
- subject recovered: a reading's subject contains the true subject (case-folded, leading article dropped), or
  ends in the same token as the true subject; for a single edit among the 5 readings with the highest fire,
  for a batch among all readings of the suspect.
- object read: that reading has status "edit" and its answer starts with the planted object's first word.
- false reading: a reading with status "edit" whose answer starts with none of the suspect's planted objects'
  first words (over all edit-status readings).
- object named (added with the hypernetworks' output-side reading, which reads objects without subjects): some
  edit-status reading of the suspect, whatever its subject, starts with the planted object's first word.
  (An earlier run compared whole first words, which missed "Google's Play Store" for "Google"; the comparison
  is now the string prefix the rule states.)
- stop words (added before the fifth held-apart set's first subject-reader run, after "Czech Republic" was
  counted as missing "the Czech Republic" on the fourth): leading stop words of the answer and the planted
  object (probing.metrics.STOP_WORDS, the retention rule's) are skipped before comparing.
Also reported (added before the eleventh set's first run; no rule above changed): objects and subjects per relation,
and how many planted edits the finished suspect still states (greedy first word that is not a stop word = the
planted object, on the fact's prompt, after the suspect's last edit) with the objects read of those.
Goals (issue): ROME subject and object >= 90 %, MEMIT/AlphaEdit >= 80 %, false readings <= 5 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# FT-L at its default lr changes no held-apart fact on SmolLM2 (first run: 0 of 3 took); 5e-4 is the setting
# bench/results/blind_reading.txt uses for FT-L
FT_HPARAMS = {"lr": 0.0005}
PLAN = [("rome", "single", 5), ("rome", "sequential", 10), ("memit", "batch", 10), ("alphaedit", "batch", 10),
        ("ft", "single", 3)]


def norm(text: str) -> str:
    from editaudit.probing.build import normalise

    return normalise(text)


def content(text: str) -> str:
    """The text from its first word that is not a stop word (the retention rule's words), case-folded."""
    from editaudit.probing.metrics import STOP_WORDS

    words = text.casefold().split()
    while len(words) > 1 and words[0].strip(".,") in STOP_WORDS:
        words = words[1:]
    return " ".join(words)


def first_word(text: str) -> str:
    return (content(text).split() or [""])[0].strip(".,")


def starts(answer: str, target: str) -> bool:
    """The answer starts with the target's first content word ("Google's Play Store" names "Google"; "Czech
    Republic" names "the Czech Republic")."""
    return content(answer).startswith(first_word(target)) if first_word(target) else False


def whole(answer: str, target: str) -> bool:
    """The answer states the whole target, not only its first word: "the Republic of Macedonia" states *Republic of
    Macedonia* and "Wyoming." *Wyoming*, but "South Africa" does not state *South Dakota*, nor "Macedonia" *Republic of
    Macedonia* (reported beside ``starts``, the rule every record is scored by)."""
    a, t = content(answer).strip(" .,;:"), content(target).strip(" .,;:")
    return bool(t) and (a == t or (a.startswith(t) and not a[len(t)].isalnum()))


def last_token(tok, text: str) -> int | None:
    ids = tok(" " + text.strip(), add_special_tokens=False)["input_ids"]
    return ids[-1] if ids else None


def score_suspect(tok, facts, readings: list[dict], single: bool) -> tuple[list[dict], int, int]:
    ranked = sorted(readings, key=lambda r: -r["fire"])
    pool = ranked[:5] if single else ranked
    rows = []
    for f in facts:
        match = None
        for r in pool:
            same = norm(f.subject) in norm(r["subject"]) or last_token(tok, r["subject"]) == last_token(tok, f.subject)
            if same:
                match = r
                break
        obj = match is not None and match["status"] == "edit" and starts(match["after"], f.target_new)
        obj_whole = obj and whole(match["after"], f.target_new)
        named = any(r["status"] == "edit" and starts(r["after"], f.target_new) for r in readings)
        rows.append({"subject": f.subject, "target_new": f.target_new, "subject_found": match is not None,
                     "object_read": obj, "object_whole": obj_whole, "object_named": named,
                     "read_as": match and f"{match['subject']} · {match['after']}"})
    edits = [r for r in readings if r["status"] == "edit"]
    false = sum(not any(starts(r["after"], f.target_new) for f in facts) for r in edits)
    return rows, false, len(edits)


def reread(lm, suspect, readings: list[dict], capitalise: bool) -> list[dict]:
    """The scan's found texts read again as the scan reads them at its defaults (``scan.reading.read_edits`` with no
    amplification, keys or frames), with ``scan.reading.CAPITALISE`` set to ``capitalise`` for the call; ``lm`` and
    ``suspect`` are loaded models (``models.loading.load_model``)."""
    import torch

    from editaudit.scan import reading
    from editaudit.scan.subjects import Subject

    kept, reading.CAPITALISE = reading.CAPITALISE, capitalise
    out = []
    try:
        with torch.inference_mode():
            for r in readings:
                s = Subject(r.get("found") or r["subject"], [], r["fire"], torch.empty(0))
                out += [x.to_dict() for x in reading.read_edits(lm.model, suspect.model, lm.tokenizer, [s],
                                                                r.get("layer"), r.get("tensor"))]
    finally:
        reading.CAPITALISE = kept
    return out


def first_token_said(model, tokenizer, texts, top_k, seen=None, lead=3):
    """``scan.reading.said`` as it was before answers were words: each prompt's first token, stop word or not."""
    from editaudit.probing.evaluate import predict
    from editaudit.scan.reading import Said, _top

    seen = {} if seen is None else seen
    preds = predict(model, tokenizer, texts, top_k=top_k, max_new_tokens=1)
    seen.update((t, dict(p.top)) for p, t in zip(preds, texts))
    return [Said(*_top(p), t, dict(p.top)) for p, t in zip(preds, texts)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--facts", type=Path, default=ROOT / "bench/heldout/smollm2-135m.jsonl")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--model", default="smollm2-135m", help="registry name of the base model")
    ap.add_argument("--plan", help="METHOD:MODE:N,... instead of the fixed plan (for development sets)")
    ap.add_argument("--regrow", action="store_true", help="scan --regrow: regrow each found subject backwards over the whole vocabulary (open_reading_v5_regrow.txt was made with it switched on in the code, as this flag does)")
    ap.add_argument("--wide-search", action=argparse.BooleanOptionalAction, default=None,
                    help="scan --wide-search/--no-wide-search: a search round that finds nothing retries with "
                    "subjects.RETRY_SEEDS seeds; default: the scan's own (on since b8d98d5; before that this script "
                    "turned it off unless the flag was given, so records made before then ran without it)")
    from editaudit.scan.service import AMPLIFY

    ap.add_argument("--amplify", choices=AMPLIFY, help="scan option amplify: read found subjects with "
                    "the edit scaled by 1/fire², for no finding, findings named MEMIT, or all (bench/heldout/"
                    "v6-amplify-plan.md, v7-plan.md); default: the scan's own")
    ap.add_argument("--read-spike", type=float, default=8.0, help="no base: read as many subjects as a flagged layer "
                    "has components at least this many times the median (scan option read_spike)")
    ap.add_argument("--name-seeds", choices=("off", "retry", "every"), default=None,
                    help="scan --name-seeds MODE (default: the scan's own); at cb36e01 the flag --name-seeds meant "
                    "'every' and --no-name-seeds 'off'")
    ap.add_argument("--below-bar", action="store_true", help="scan --below-bar; the record is scored twice, with and "
                    "without the readings it added (the search before it is the same, so one scan serves both)")
    ap.add_argument("--reread-capitalised", action="store_true", help="a second arm on the same scans: every found "
                    "text read again with scan.reading.CAPITALISE on (a text no form of which reads an edit at "
                    "CAPITALISE_BELOW confidence is also read capitalised); the record is scored for the scan as it "
                    "ran and for the re-read, and the found texts are read once more as the scan read them, for the "
                    "time and as a check that the re-read gives the scan's readings")
    ap.add_argument("--phrasings", action="append", default=[], metavar="RELATION=TEMPLATE",
                    help="add a phrasing to the relation library for this run (a trial; the library is not changed), "
                         "e.g. 'P131 located in={} is located in the state of'")
    ap.add_argument("--start", type=int, default=0, help="the first fact the plan takes (a later split of a set whose "
                    "first facts were used)")
    ap.add_argument("--answers", choices=("word", "token"), default="word", help="token: read each prompt's answer as "
                    "its first token, stop word or not (the reader before scan.reading.said; for comparison)")
    ap.add_argument("--no-base", action="store_true", help="scan each suspect alone (no --base), and scan the unedited "
                    "controls of --controls the same way")
    ap.add_argument("--controls", default="", help="unedited checkpoints (registry names or folders) to scan the "
                    "suspects' way (false positives)")
    ap.add_argument("--gain-screen", action=argparse.BooleanOptionalAction, default=None, help="no base: the key-gain "
                    "screen on or off (suspects and controls; default: the scan's default, on)")
    ap.add_argument("--map-runs", action=argparse.BooleanOptionalAction, default=None, help="no base: extend each "
                    "layer the key-gain screen flags to the run its text's output direction follows (scan "
                    "--map-runs; default: the scan's default)")
    ap.add_argument("--drop-repeats", action=argparse.BooleanOptionalAction, default=None, help="no base, runs "
                    "mapped: a flagged layer's text the subjects already grown explain is not grown and read again "
                    "(scan option drop_repeats); default: the scan's own")
    ap.add_argument("--score-merged", action="store_true", help="the record is scored twice: as the scan read it "
                    "and with the readings of one edit found at several layers merged into one "
                    "(scan.reading.merge_repeats, the scan option merge_repeats; one scan serves both: the scan runs "
                    "with merge_repeats off and the script merges). With the scan's default --drop-repeats there is "
                    "nothing to merge: add --no-drop-repeats")
    ap.add_argument("--bos-context", action=argparse.BooleanOptionalAction, default=None,
                    help="the subject search reads candidates behind the tokenizer's BOS (scan.keys.BOS_CONTEXT) or "
                    "not; default: the scan's own. No effect on a tokenizer without a BOS (SmolLM2's)")
    args = ap.parse_args()
    if args.start < 0:
        ap.error(f"--start must be 0 or more, not {args.start}")
    try:
        plan = [(m, mode, int(n)) for m, mode, n in (x.split(":") for x in args.plan.split(","))] if args.plan else PLAN
    except ValueError:
        ap.error(f"--plan wants METHOD:MODE:N,... (e.g. rome:single:5,memit:batch:10), not {args.plan!r}")
    if any(n < 1 for _, _, n in plan):
        ap.error(f"--plan wants METHOD:MODE:N with N of 1 or more, not {args.plan!r}")

    import torch

    from editaudit.editing.layers import default_layers
    from editaudit.editing.service import apply_edits
    from editaudit.models.loading import load_model
    from editaudit.models.registry import ensure_model
    from editaudit.probing.evaluate import retention
    from editaudit.probing.format import load_probes
    from editaudit.probing.sets import round_robin
    from editaudit.scan import keys as scan_keys
    from editaudit.scan.service import ScanOptions, run_scan

    torch.manual_seed(0)
    if args.bos_context is not None:
        scan_keys.BOS_CONTEXT = args.bos_context
    if args.phrasings:
        from editaudit.scan.relations import RELATIONS

        for item in args.phrasings:
            relation, _, template = item.partition("=")
            if "{}" not in template:
                ap.error(f"--phrasings wants RELATION=TEMPLATE with {{}} for the subject, not {item!r}")
            RELATIONS[relation] = RELATIONS.get(relation, ()) + (template,)
    base = ensure_model(args.model)
    facts = round_robin(load_probes(args.facts))[args.start:]
    if args.answers == "token":
        from editaudit.scan import reading

        reading.said = first_token_said
    lm = load_model(base)
    tok = lm.tokenizer
    n_layers = lm.model.config.num_hidden_layers
    took = f"{len(facts)} from fact {args.start}" if args.start else f"{len(facts)}"
    lines = [f"open-set reading on {args.model}, facts from {args.facts.name} ({took}), no list, answers: {args.answers}",
             "command: python scripts/open_reading_eval.py " + " ".join(sys.argv[1:]),
             "no base: " + ("yes, key-gain screen " + ("on" if (ScanOptions().gain_screen if args.gain_screen is None
                                                             else args.gain_screen) else "off")
                          + ", runs mapped " + ("on" if (ScanOptions().map_runs if args.map_runs is None
                                                         else args.map_runs) else "off")
                          + ", editor told by the null-space lean " + ("on" if ScanOptions().null_lean else "off")
                          + ", repeats dropped " + ("on" if (ScanOptions().drop_repeats if args.drop_repeats is None
                                                             else args.drop_repeats) else "off")
                          if args.no_base else "no"),
             "subject search context: " + repr(tok.convert_ids_to_tokens(scan_keys.context_ids(tok))),
             f"{'suspects':22s} {'edits':>5s} {'took':>5s} {'layer':>6s} {'subject':>8s} {'object':>7s} "
             f"{'subj+obj':>8s} {'named':>6s} {'false':>9s} {'s/scan':>7s} {'s/edit':>7s}"]
    print(lines[0], file=sys.stderr)
    detail: list[str] = []
    doc: dict = {"facts": str(args.facts), "start": args.start, "answers": args.answers, "arms": []}
    used = 0
    with tempfile.TemporaryDirectory(prefix="editaudit-open-") as tmp:
        for method, mode, n in plan:
            chunk = facts[used:used + n]
            used += n
            # the hypernetworks edit the layers they were trained for (editing.hypernet), not a chosen one
            layers = None if method in ("mend", "malmen") else default_layers(method, n_layers)
            groups = [[f] for f in chunk] if mode == "single" else [chunk]
            rows, false, reported, took, t_scan, layer_ok, methods, extra_layers = [], 0, 0, 0, 0.0, 0, [], 0
            hit_suspects, layers_hit, layers_wrote = 0, 0, 0  # suspects with any edited layer flagged; layers flagged
            without = {"objects": 0, "whole": 0, "false": 0, "edit_readings": 0}
            merged = {"subjects": 0, "objects": 0, "false": 0, "edit_readings": 0}
            caps = {"objects": 0, "whole": 0, "false": 0, "edit_readings": 0, "seconds": 0.0, "plain_seconds": 0.0,
                    "plain_same": 0, "plain_n": 0}
            for i, group in enumerate(groups):
                out = Path(tmp) / f"{method}-{mode}-{i}"
                hp = {"mode": "sequential"} if mode == "sequential" else FT_HPARAMS if method == "ft" else None
                # each suspect from its own seed, so that two runs that differ only in the scan's options (arms)
                # scan the same suspects whatever randomness the scans between them used
                torch.manual_seed(zlib.crc32(f"{args.start}:{method}:{mode}:{i}".encode()))
                run = apply_edits(lm, group, method, layers=layers, out=out, hparams=hp, evaluate=True)
                took += sum(bool(r.success) for r in run.results)
                # the finished suspect may no longer state an edit a later one in the same layer undid
                states = [bool(x) for x in retention(lm.model, tok, group, "new")]
                wrote = list(run.layers)
                run.restore()
                t = time.perf_counter()
                opts = ScanOptions(read="open", regrow=args.regrow,
                                   **({} if args.wide_search is None else {"wide_search": args.wide_search}),
                                   read_spike=args.read_spike, below_bar=args.below_bar,
                                   **({} if args.gain_screen is None else {"gain_screen": args.gain_screen}),
                                   **({} if args.map_runs is None else {"map_runs": args.map_runs}),
                                   **({} if args.drop_repeats is None else {"drop_repeats": args.drop_repeats}),
                                   **({"merge_repeats": False} if args.score_merged else {}),
                                   **({} if args.name_seeds is None else {"name_seeds": args.name_seeds}),
                                   **({"amplify": args.amplify} if args.amplify else {}))
                offers: list[str] = []  # what reading past the bar saw (scan --below-bar), kept or not
                report = run_scan(out, None if args.no_base else base, opts, store=None,
                                  say=lambda m: offers.append(m) if m.startswith("below the fire bar") else None)
                detail.extend(f"    [{method}/{mode}] {m}" for m in offers)
                t_scan += time.perf_counter() - t
                doc_r = report.to_dict()
                edits = [f for f in doc_r["findings"] if f["rule"] in ("EA101", "EA102", "EA103", "EA111")]
                named = [f["method"]["name"] for f in edits if f.get("method")]
                methods.append(named[0] if named else "-")
                detail.extend(f"    [{method}/{mode}] layers {f['layers']}: named {f['method']['name']}, "
                              f"null-space lean {f['null_lean']['median']} (by flagged layer "
                              f"{f['null_lean']['by_layer']})"
                              for f in edits if f.get("null_lean") and f.get("method"))
                found_layers = {x for f in edits for x in f["layers"]}
                layer_ok += len(group) if set(wrote) <= found_layers else 0
                extra_layers += len(found_layers - set(wrote))
                hit_suspects += bool(found_layers & set(wrote))
                layers_hit += len(found_layers & set(wrote))
                layers_wrote += len(set(wrote))
                readings = [r for f in doc_r["findings"] for r in f.get("readings", [])]
                r_rows, r_false, r_n = score_suspect(tok, group, readings, mode == "single")
                if args.below_bar:  # the same scan without what the readings below the bar added
                    w_rows, w_false, w_n = score_suspect(tok, group, [r for r in readings if not r.get("below_bar")],
                                                         mode == "single")
                    without["objects"] += sum(r["object_read"] for r in w_rows)
                    without["whole"] += sum(r["object_whole"] for r in w_rows)
                    without["false"] += w_false
                    without["edit_readings"] += w_n
                if args.score_merged:  # the same scan, each finding's repeats of one edit merged into one reading
                    from dataclasses import fields

                    from editaudit.scan.reading import Reading, merge_repeats

                    names = {x.name for x in fields(Reading)}
                    joined = [m.to_dict() for f in doc_r["findings"]
                              for m in merge_repeats([Reading(**{k: v for k, v in r.items() if k in names})
                                                      for r in f.get("readings", [])])]
                    m_rows, m_false, m_n = score_suspect(tok, group, joined, mode == "single")
                    merged["objects"] += sum(r["object_read"] for r in m_rows)
                    merged["subjects"] += sum(r["subject_found"] for r in m_rows)
                    merged["false"] += m_false
                    merged["edit_readings"] += m_n
                    detail.extend(f"    [{method}/{mode}] merged: {r['subject']!r} · {r['after']!r} (conf "
                                  f"{r['confidence']:.2f} {r['status']}), {len(r['forms'])} repeat(s) merged"
                                  for r in joined)
                if args.reread_capitalised:  # the same found texts, read again with capitalised forms
                    suspect = load_model(out)
                    t_re = time.perf_counter()  # the plain re-read: its time, and that it gives the scan's readings
                    plain = reread(lm, suspect, readings, capitalise=False)
                    caps["plain_seconds"] += time.perf_counter() - t_re
                    caps["plain_n"] += len(readings)
                    caps["plain_same"] += sum((a["subject"], a["after"], a["status"]) == (b["subject"], b["after"],
                                                                                        b["status"])
                                              for a, b in zip(plain, readings))
                    t_re = time.perf_counter()
                    again = reread(lm, suspect, readings, capitalise=True)
                    del suspect
                    c_rows, c_false, c_n = score_suspect(tok, group, again, mode == "single")
                    caps["objects"] += sum(r["object_read"] for r in c_rows)
                    caps["whole"] += sum(r["object_whole"] for r in c_rows)
                    caps["false"] += c_false
                    caps["edit_readings"] += c_n
                    caps["seconds"] += time.perf_counter() - t_re
                    detail.extend(f"    [{method}/{mode}] re-read capitalised: {r['found']!r} → {r['subject']!r} · "
                                  f"{r['after']!r} (conf {r['confidence']:.2f} {r['status']})" for r in again)
                for r, f, says in zip(r_rows, group, states):
                    r["relation"], r["stated"] = f.relation, says
                rows += r_rows
                false += r_false
                reported += r_n
                for r in readings:
                    detail.append(f"    [{method}/{mode}] read: {r['subject']!r} · {r['prompt']!r} · {r['after']!r} "
                                  f"(was {r['before']!r}) fire {r['fire']:.2f} conf {r['confidence']:.2f} {r['status']}"
                                  + (" below the bar" if r.get("below_bar") else ""))
                shutil.rmtree(out, ignore_errors=True)
            k = len(rows)
            subj = sum(r["subject_found"] for r in rows)
            obj = sum(r["object_read"] for r in rows)
            line = (f"{method + ' ' + mode + ' x' + str(len(groups)):22s} {k:5d} {took / k:5.0%} {layer_ok / k:6.0%} "
                    f"{subj / k:8.0%} {sum(r['object_read'] for r in rows) / k:7.0%} {obj / k:8.0%} "
                    f"{sum(r['object_named'] for r in rows) / k:6.0%} {false:3d}/{reported:<5d} {t_scan / len(groups):7.1f} {t_scan / k:7.1f}")
            lines.append(line)
            print(line, file=sys.stderr)
            if args.reread_capitalised:
                lines.append(f"{'  re-read capitalised':22s} objects {caps['objects']}/{k}, whole {caps['whole']}, "
                             f"false {caps['false']}/{caps['edit_readings']}, re-reading {caps['seconds']:.0f} s "
                             f"(plain re-read {caps['plain_seconds']:.0f} s, {caps['plain_same']}/{caps['plain_n']} "
                             "readings as the scan's)")
            if args.score_merged:
                lines.append(f"{'  repeats merged':22s} subjects {merged['subjects']}/{k}, objects {merged['objects']}/{k}, "
                             f"false {merged['false']}/{merged['edit_readings']}")
            if args.below_bar:
                lines.append(f"{'  without below-bar':22s} objects {without['objects']}/{k}, whole {without['whole']}, "
                             f"false {without['false']}/{without['edit_readings']}")
            for r in rows:
                detail.append(f"    [{method}/{mode}] {r['subject']} → {r['target_new']}: subject "
                              f"{'found' if r['subject_found'] else 'MISSED'}, object {'read' if r['object_read'] else 'MISSED'}"
                              f"{', named by a reading' if r['object_named'] and not r['object_read'] else ''}"
                              f"{' as ' + r['read_as'] if r['read_as'] else ''}")
            want = {"rome": "rome", "memit": "memit", "alphaedit": "alphaedit", "ft": "ft-l", "mend": "mend",
            "malmen": "malmen"}[method]
            detail.append(f"    [{method}/{mode}] layers flagged that were not edited: {extra_layers}")
            detail.append(f"    [{method}/{mode}] suspects with an edited layer flagged: {hit_suspects}/{len(groups)}; "
                          f"edited layers flagged: {layers_hit}/{layers_wrote}")
            detail.append(f"    [{method}/{mode}] method named: {', '.join(methods)} "
                          f"({sum(m == want for m in methods)}/{len(methods)} correct)")
            doc["arms"].append({"methods_named": methods, "method_correct": sum(m == want for m in methods),"method": method, "mode": mode, "edits": k, "took": took, "layer_found": layer_ok,
                                "subject_found": subj, "object_read": obj, "false_readings": false,
                                "object_named": sum(r["object_named"] for r in rows),
                                "object_whole": sum(r["object_whole"] for r in rows),
                                "edit_readings": reported, "scan_seconds": round(t_scan, 1), "rows": rows,
                                "extra_layers": extra_layers, "suspects_flagged": hit_suspects, "layers_flagged": layers_hit, "layers_edited": layers_wrote,
                                **({"without_below_bar": without} if args.below_bar else {}),
                                **({"repeats_merged": merged} if args.score_merged else {}),
                                **({"reread_capitalised": caps} if args.reread_capitalised else {})})
    for name in [c for c in args.controls.split(",") if c]:  # unedited checkpoints: every finding is a false alarm
        t = time.perf_counter()
        where = Path(name) if Path(name).exists() else ensure_model(name)
        control = run_scan(where, None if args.no_base else base,
                           ScanOptions(read="off", **({} if args.gain_screen is None else {"gain_screen": args.gain_screen}),
                                       **({} if args.map_runs is None else {"map_runs": args.map_runs})), store=None)
        spikes = (control.base.get("largest_spike") or {}).get("ratio")
        gained = control.base.get("largest_gain") or {}
        edits = [f for f in control.findings if f.rule in ("EA101", "EA102", "EA103", "EA111")]
        line = (f"control {Path(name).name:14s} unedited: {len(edits)} edit finding(s)"
                + (f", largest outlier/median {spikes:.1f}" if spikes is not None else "")
                + (f", largest key gain {gained['ratio']:.2f}× the median start (layer {gained['layer']}, "
                   f"{gained['text']!r})" if gained else "")
                + f"  ({time.perf_counter() - t:.0f}s)")
        lines.append(line)
        print(line, file=sys.stderr)
        doc.setdefault("controls", []).append({"model": name, "edit_findings": len(edits), "max_spike": spikes,
                                              "largest_gain": gained or None})
    every = [r for arm in doc["arms"] for r in arm["rows"]]
    if every:
        rels = sorted({r["relation"] or "-" for r in every})
        lines.append("by relation: " + "; ".join(
            f"{rel}: objects {sum(r['object_read'] for r in every if (r['relation'] or '-') == rel)}/"
            f"{sum((r['relation'] or '-') == rel for r in every)}, subjects "
            f"{sum(r['subject_found'] for r in every if (r['relation'] or '-') == rel)}" for rel in rels))
        lines.append("whole answers (objects read whose answer states the planted object whole, not only its first "
                     "word): " + ", ".join(f"{a['method']} {a['mode']} {a['object_whole']}/{a['edits']}" for a in doc["arms"])
                     + f"; all {sum(r['object_whole'] for r in every)}/{len(every)}")
        held = [r for r in every if r["stated"]]
        lines.append(f"stated by the finished suspects: {len(held)}/{len(every)} planted edits; objects read of those: "
                     f"{sum(r['object_read'] for r in held)}/{len(held)}")
    lines.append("  (object: the reading matched to the fact states the planted object; named: some edit-status "
                 "reading, any subject, states it; false: edit-status readings whose answer is no planted object)")
    text = "\n".join(lines + ["", "details:"] + detail) + "\n"
    print(text)
    if args.out:
        from editaudit.atomic import atomic_write_text

        atomic_write_text(args.out, text)
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
