"""The papers' claims (helpers.papers) against the README's claims table, and the ledger's rules."""
from collections import Counter

import pytest

from helpers import papers as P
from helpers.evaluate import CONTRADICTED, NOT_SEPARABLE, REPRODUCED


def _table(*rows):
    """A claims table as parse_claims_table returns it, from (chapter, claim, verdict) triples."""
    return [{"chapter": ch, "claim": claim, "verdict": verdict, "evidence": f"diff=+0.00 ({claim})"}
            for ch, claim, verdict in rows]


def _claim(evidence, paper="ACK", chapter="02"):
    return {"paper": paper, "chapter": chapter, "claim": "A beats B.", "paper_setting": "VGG16, Oxford5k, Table 1",
            "paper_result": "mAP 2 vs 1", "evidence": evidence, "our_setting_differs": "EfficientNet-Lite0"}


def test_paper_claims_are_well_formed():
    P.validate_claims()
    per_paper = Counter(c["paper"] for c in P.PAPER_CLAIMS)
    assert set(per_paper) == set(P.PAPERS)
    assert all(3 <= n <= 8 for n in per_paper.values()), per_paper   # headline claims only
    assert len({(c["paper"], c["claim"]) for c in P.PAPER_CLAIMS}) == len(P.PAPER_CLAIMS)


def test_every_chapter_claim_prefix_matches_exactly_one_readme_line():
    table = P.readme_claims()
    assert table, "the README's claims table is empty"
    for c in P.PAPER_CLAIMS:
        if "chapter_claim" not in c["evidence"]:
            continue
        for prefix in P._prefixes(c["evidence"]):
            hits = [row for row in table if row["claim"].startswith(prefix)]
            assert len(hits) == 1, f"{c['paper']}: {prefix!r} matches {[h['claim'] for h in hits]}"
            assert hits[0]["chapter"] == c["chapter"], (prefix, hits[0]["chapter"], c["chapter"])


def test_row_labels_are_summary_rows():
    assert len(P.ROW_LABELS) == 15
    for c in P.PAPER_CLAIMS:
        if "rows" in c["evidence"]:
            a, b = c["evidence"]["rows"]
            assert a in P.ROW_LABELS and b in P.ROW_LABELS and a != b
            assert c["evidence"]["expected"] in (1, -1)


def test_chapters_with_claim_lines_are_cited():
    """A chapter whose claim lines reach the README must be cited by its paper's claims (chapter 05's
    claims say "not tested yet" only while the README holds no chapter-05 line)."""
    table = P.readme_claims()
    cited = {c["chapter"] for c in P.PAPER_CLAIMS if "chapter_claim" in c["evidence"]}
    for chapter in P.PAPERS.values():
        n_lines = sum(row["chapter"] == chapter for row in table)
        if n_lines:
            assert chapter in cited, (f"the README lists {n_lines} claim lines of chapter {chapter} but "
                                      f"helpers/papers.py cites none of them: update PAPER_CLAIMS")


def test_ledger_of_the_current_readme():
    rows = P.ledger_rows(P.readme_claims())
    assert len(rows) == len(P.PAPER_CLAIMS)
    assert all(tuple(row) == P.LEDGER_COLUMNS for row in rows)
    allowed = set(P.VERDICTS) | {P.MIXED, P.NOT_TESTED, P.NOT_EVALUATED}
    assert {row["verdict"] for row in rows} <= allowed
    markdown = P.ledger_markdown(rows)
    assert markdown.count("\n") == len(rows) + 1 and markdown.startswith("| paper | claim |")


def test_combined_verdict_rule():
    R, C, N = REPRODUCED, CONTRADICTED, NOT_SEPARABLE
    assert P.combine_verdicts([R]) == R and P.combine_verdicts([C]) == C and P.combine_verdicts([N]) == N
    assert P.combine_verdicts([R, R, R]) == R
    assert P.combine_verdicts([R, C, R]) == C
    assert P.combine_verdicts([N, C]) == C
    assert P.combine_verdicts([N, N]) == N
    assert P.combine_verdicts([R, N]) == P.MIXED
    with pytest.raises(ValueError):
        P.combine_verdicts([])
    with pytest.raises(ValueError, match="unknown"):
        P.combine_verdicts([R, "better"])


def test_ledger_combines_several_lines_and_takes_one_line_as_is():
    table = _table(("02", "Table 2: x beats y (n=4)", REPRODUCED), ("02", "Table 2: x beats y (n=16)", NOT_SEPARABLE),
                   ("02", "Fig. 5: dosd beats Jaccard (n=16)", CONTRADICTED), ("03", "Table 2: x beats y (n=4)", CONTRADICTED))
    claims = [_claim({"chapter_claim": ["Table 2: x beats y (n=4)", "Table 2: x beats y (n=16)"]}),
              _claim({"chapter_claim": "Fig. 5: dosd"}),
              _claim({"none": "needs Oxford5k"})]
    mixed, single, none = P.ledger_rows(table, claims=claims)
    assert mixed["verdict"] == P.MIXED            # the chapter-03 line of the same text is not looked at
    assert "(n=4)" in mixed["our evidence"] and "(n=16)" in mixed["our evidence"]
    assert single["verdict"] == CONTRADICTED
    assert none["verdict"] == P.NOT_TESTED and none["our evidence"] == "needs Oxford5k"


def test_missing_or_ambiguous_prefix_raises():
    table = _table(("02", "Table 2: x beats y (n=4)", REPRODUCED), ("02", "Table 2: x beats y (n=16)", REPRODUCED))
    with pytest.raises(P.LedgerError, match="no line"):
        P.ledger_rows(table, claims=[_claim({"chapter_claim": "Table 3: x beats y"})])
    with pytest.raises(P.LedgerError, match="no line"):   # present, but in another chapter
        P.ledger_rows(table, claims=[_claim({"chapter_claim": "Table 2: x"}, paper="ACTNET", chapter="03")])
    with pytest.raises(P.LedgerError, match="2 lines"):
        P.ledger_rows(table, claims=[_claim({"chapter_claim": "Table 2: x beats y"})])
    with pytest.raises(P.LedgerError, match="no line"):   # one of several prefixes missing
        P.ledger_rows(table, claims=[_claim({"chapter_claim": ["Table 2: x beats y (n=4)", "Table 2: gone"]})])


def test_summary_rows_evidence():
    claims = [_claim({"rows": ("gem", "ack"), "expected": +1})]
    (row,) = P.ledger_rows([], claims=claims)
    assert row["verdict"] == P.NOT_EVALUATED
    (row,) = P.ledger_rows([], {("gem", "ack"): (REPRODUCED, "diff=+1.00")}, claims=claims)
    assert row["verdict"] == REPRODUCED and "ack beats gem" in row["our evidence"] and "diff=+1.00" in row["our evidence"]
    with pytest.raises(P.LedgerError, match="lack the pair"):
        P.ledger_rows([], {("ack", "gem"): (REPRODUCED, "")}, claims=claims)
    with pytest.raises(P.LedgerError, match="unknown verdict"):
        P.ledger_rows([], {("gem", "ack"): ("better", "")}, claims=claims)


def test_invalid_claims_are_refused():
    for evidence in ({"rows": ("gem", "vgg"), "expected": 1}, {"rows": ("gem", "gem"), "expected": 1},
                     {"rows": ("gem", "ack"), "expected": 2}, {"rows": ("gem", "ack")},
                     {"chapter_claim": []}, {"chapter_claim": ""}, {"none": ""},
                     {"none": "x", "chapter_claim": "y"}, {}):
        with pytest.raises(P.LedgerError):
            P.validate_claims([_claim(evidence)])
    with pytest.raises(P.LedgerError, match="chapter"):
        P.validate_claims([_claim({"none": "x"}, paper="ACK", chapter="03")])


def test_parse_claims_table():
    text = "\n".join([
        "intro | not a table row", P.BEGIN,
        "| chapter | claim | verdict on the demo | evidence (per-query AP, paired bootstrap) |", "|---|---|---|---|",
        "| 02 | Table 2: a beats b (n=4) | reproduced | diff=+4.96, 95% CI [+0.02, +10.08], p=0.087, 70 queries |",
        "| 06 | Fig. 3: a/b | not separable on this data | rho=-1.00, 95% CI [-1.00, +0.50] |", P.END,
        "| 99 | outside the markers | reproduced | x |"])
    rows = P.parse_claims_table(text)
    assert rows == [
        {"chapter": "02", "claim": "Table 2: a beats b (n=4)", "verdict": REPRODUCED,
         "evidence": "diff=+4.96, 95% CI [+0.02, +10.08], p=0.087, 70 queries"},
        {"chapter": "06", "claim": "Fig. 3: a/b", "verdict": NOT_SEPARABLE, "evidence": "rho=-1.00, 95% CI [-1.00, +0.50]"}]
    assert P.parse_claims_table(text.split(P.BEGIN)[1].split(P.END)[0]) == rows   # the table alone
    with pytest.raises(P.LedgerError, match="cells"):
        P.parse_claims_table("| 02 | a | reproduced |")
    with pytest.raises(P.LedgerError, match="both"):
        P.parse_claims_table(P.BEGIN + "\n| 02 | a | reproduced | x |")


def test_readme_parse_agrees_with_the_claims_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("claims_table", P.Path(P.__file__).parents[1] / "scripts" / "claims_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    readme = P.Path(P.__file__).parents[1] / "README.md"
    lines = script.readme_table(readme).splitlines()[2:]
    parsed = P.readme_claims(readme)
    assert len(parsed) == len(lines)
    assert [f"| {r['chapter']} | {r['claim']} | {r['verdict']} | {r['evidence']} |" for r in parsed] == lines
