"""Reading the pool's data sets (:mod:`metalm.data.pool`) into rows of plain fields.

A task file names ``source: {kind: pool, name: DATASET, config: SUBSET, split: SPLIT}``; the reader
of ``DATASET`` returns the rows of ``SUBSET`` in ``SPLIT`` as dicts (the text under ``text``, or
``input``/``output`` for instruction induction; the class under ``label``). Everything here is how
the upstream files are laid out; what a task asks is in its YAML file (``scripts/make_pool_tasks.py``
writes them). Rows come out in the files' order: the sampler draws from them with its own seed.
"""

from __future__ import annotations

import json
import random
import re
import zipfile
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree

from ..errors import DataNotFoundError, TaskError
from .pool import pool_file

Rows = list[dict[str, Any]]

#: BANKING77's intents in groups, by the first of these words that the intent's name contains (the
#: rule written before any figure was seen; ``account`` takes what matches none).
BANKING_GROUPS = (("top_up", ("top_up", "topping_up")), ("transfer", ("transfer",)),
                  ("cash", ("cash", "atm")), ("exchange", ("exchange", "currenc", "fiat")),
                  ("identity", ("identity", "verify", "personal_details")), ("security", ("pin", "passcode",
                                                                                           "compromised", "lost")),
                  ("payment", ("payment", "refund", "charged_twice", "direct_debit")), ("card", ("card",)))
TREC_COARSE = {"ABBR": "abbreviation", "DESC": "description", "ENTY": "entity", "HUM": "person", "LOC": "location",
               "NUM": "number"}


def banking_group(intent: str) -> str:
    """The group of a BANKING77 intent under :data:`BANKING_GROUPS` (``account`` if none matches)."""
    name = intent.lower()
    return next((group for group, words in BANKING_GROUPS if any(w in name for w in words)), "account")


def _lines(source: str, path: str, encoding: str = "utf-8") -> list[str]:
    return pool_file(source, path).read_text(encoding=encoding).splitlines()


def _zip_text(name: str, member: str, encoding: str = "utf-8") -> str:
    with zipfile.ZipFile(pool_file("nltk_corpora", f"packages/corpora/{name}.zip")) as zf:
        return zf.read(member).decode(encoding)


def _zip_members(name: str) -> list[str]:
    with zipfile.ZipFile(pool_file("nltk_corpora", f"packages/corpora/{name}.zip")) as zf:
        return sorted(zf.namelist())


def blimp(subset: str, split: str) -> Rows:
    """A BLiMP phenomenon as acceptability judgments: each minimal pair gives its good sentence
    (``grammatical``) and its bad one (``ungrammatical``), ``pair`` tying them."""
    rows: Rows = []
    for i, line in enumerate(_lines("blimp", f"data/{subset}.jsonl")):
        pair = json.loads(line)
        for key, label in (("sentence_good", "grammatical"), ("sentence_bad", "ungrammatical")):
            rows.append({"text": pair[key], "label": label, "pair": i, "field": pair["field"]})
    return rows


def tweeteval(subset: str, split: str) -> Rows:
    """A TweetEval task (``emotion``, ``stance/abortion``, ...): tweets and their class names from
    ``mapping.txt`` (emoji: the emoji's name, ``red heart``)."""
    folder = f"datasets/{subset}"
    mapping_at = f"datasets/{subset.split('/')[0]}/mapping.txt"
    names = {}
    for line in _lines("tweeteval", mapping_at):
        if line.strip():
            parts = line.split("\t")
            names[parts[0].strip()] = (parts[2].strip("_ ").replace("_", " ") if len(parts) > 2 else parts[1].strip())
    texts = _lines("tweeteval", f"{folder}/{split}_text.txt")
    labels = _lines("tweeteval", f"{folder}/{split}_labels.txt")
    if len(texts) != len(labels):
        raise TaskError("source", f"tweeteval {folder}/{split}: {len(texts)} texts but {len(labels)} labels")
    return [{"text": t.strip(), "label": names[lab.strip()]} for t, lab in zip(texts, labels, strict=True)]


def clinc150(subset: str, split: str) -> Rows:
    """CLINC150: ``subset`` a domain (its 15 intents, e.g. ``banking``) or ``domains`` (which of the 10
    domains an in-scope utterance belongs to)."""
    domains = json.loads(pool_file("clinc150", "data/domains.json").read_text(encoding="utf-8"))
    data = json.loads(pool_file("clinc150", "data/data_full.json").read_text(encoding="utf-8"))
    domain_of = {intent: d for d, intents in domains.items() for intent in intents}
    if subset != "domains" and subset not in domains:
        raise TaskError("source.config", f"clinc150 has no domain {subset!r} (known: {', '.join(domains)}, domains)")
    return [{"text": text, "label": domain_of[intent] if subset == "domains" else intent,
             "domain": domain_of[intent]}
            for text, intent in data[split] if subset == "domains" or domain_of[intent] == subset]


def banking77(subset: str, split: str) -> Rows:
    """BANKING77: ``subset`` a group of :data:`BANKING_GROUPS` (the intents of that group) or ``all``."""
    import csv

    rows = list(csv.DictReader(_lines("banking77", f"banking_data/{split}.csv")))
    return [{"text": r["text"], "label": r["category"]} for r in rows
            if subset == "all" or banking_group(r["category"]) == subset]


def instruction_induction(subset: str, split: str) -> Rows:
    """An instruction-induction task: ``input`` -> ``output`` with every accepted answer in
    ``references``; ``train`` is the upstream ``induce`` set, ``test`` the ``execute`` set. Choice-like
    tasks get ``options`` and ``answer`` (their index) as well."""
    part = {"train": "induce", "test": "execute"}.get(split)
    if part is None:
        raise TaskError("source.split", f"instruction_induction has splits train and test, not {split!r}")
    examples = json.loads(pool_file("instruction_induction", f"data/raw/{part}/{subset}.json")
                          .read_text(encoding="utf-8"))["examples"]
    rows: Rows = []
    for key, ex in examples.items():
        if subset == "cause_and_effect":  # which of two sentences is the cause
            pair = [ex["cause"], ex["effect"]]
            random.Random(f"{subset}/{part}/{key}").shuffle(pair)
            rows.append({"input": f"Sentence 1: {pair[0]} Sentence 2: {pair[1]}", "output": ex["cause"],
                         "options": pair, "answer": pair.index(ex["cause"]), "references": [ex["cause"]]})
            continue
        if subset == "common_concept":
            rows.append({"input": ", ".join(ex["items"]), "output": ex["concept"],
                         "references": list(ex["all_common_concepts"])})
            continue
        extra = ex.get("possible_translations") or ex.get("possible_outputs") or []
        if subset == "rhymes":
            extra = [w for w in ex.get("other_rhymes", []) if w != ex["input"]]
        refs = list(dict.fromkeys([ex["output"], *extra]))
        row = {"input": ex["input"], "output": ex["output"], "references": refs}
        if subset == "larger_animal":
            row["options"] = [o.strip() for o in ex["input"].split(",")]
            row["answer"] = row["options"].index(ex["output"])
        rows.append(row)
    return rows


def trec(subset: str, split: str) -> Rows:
    """TREC question types (NLTK's ``qc``): ``coarse`` (6 classes) or ``fine/COARSE`` (the fine types
    within one coarse class, e.g. ``fine/HUM``)."""
    rows: Rows = []
    for line in _zip_text("qc", f"qc/{split}.txt", "latin-1").splitlines():
        if not line.strip():
            continue
        tag, question = line.split(" ", 1)
        coarse, fine = tag.split(":", 1)
        if subset == "coarse":
            rows.append({"text": question.strip(), "label": TREC_COARSE[coarse]})
        elif subset == f"fine/{coarse}":
            rows.append({"text": question.strip(), "label": fine})
    return rows


def _two_files(corpus: str, files: dict[str, str]) -> Rows:
    return [{"text": line.strip(), "label": label} for member, label in files.items()
            for line in _zip_text(corpus, f"{corpus}/{member}", "latin-1").splitlines() if line.strip()]


def sentence_polarity(subset: str, split: str) -> Rows:
    """Movie-review sentences, ``positive`` or ``negative`` (Pang & Lee 2005)."""
    return _two_files("sentence_polarity", {"rt-polarity.neg": "negative", "rt-polarity.pos": "positive"})


def subjectivity(subset: str, split: str) -> Rows:
    """Plot summaries (``objective``) and review snippets (``subjective``) (Pang & Lee 2004)."""
    return _two_files("subjectivity", {"plot.tok.gt9.5000": "objective", "quote.tok.gt9.5000": "subjective"})


def nps_chat(subset: str, split: str) -> Rows:
    """NPS chat posts and their dialogue acts (``System`` posts, joins and parts, left out)."""
    rows: Rows = []
    for member in _zip_members("nps_chat"):
        if member.endswith(".xml"):
            root = ElementTree.fromstring(_zip_text("nps_chat", member, "utf-8"))
            for post in root.iter("Post"):
                text = " ".join((post.text or "").split())
                if post.get("class") != "System" and text:
                    rows.append({"text": text, "label": post.get("class")})
    return rows


def rte(subset: str, split: str) -> Rows:
    """RTE 1-3 (``train``: the dev sets, ``test``: the test sets): ``premise``, ``hypothesis`` and
    ``entailment`` or ``not entailment``."""
    rows: Rows = []
    for member in _zip_members("rte"):
        if re.fullmatch(rf"rte/rte\d_{'dev' if split == 'train' else 'test'}\.xml", member):
            root = ElementTree.fromstring(_zip_text("rte", member, "utf-8"))
            for pair in root.iter("pair"):
                value = (pair.get("value") or pair.get("entailment") or "").upper()
                if value in ("TRUE", "YES", "FALSE", "NO"):
                    rows.append({"premise": " ".join(pair.findtext("t", "").split()),
                                 "hypothesis": " ".join(pair.findtext("h", "").split()),
                                 "label": "entailment" if value in ("TRUE", "YES") else "not entailment"})
    return rows


READERS: dict[str, Callable[[str, str], Rows]] = {
    "blimp": blimp, "tweeteval": tweeteval, "clinc150": clinc150, "banking77": banking77,
    "instruction_induction": instruction_induction, "trec": trec, "sentence_polarity": sentence_polarity,
    "subjectivity": subjectivity, "nps_chat": nps_chat, "rte": rte,
}


def pool_rows(dataset: str, subset: str | None, split: str, source: str | None = None) -> Rows:
    """The rows of ``subset`` of pool data set ``dataset`` in ``split``.

    Raises:
        TaskError: Naming ``source`` (the task file) for an unknown data set, subset or split.
        DataNotFoundError: If the pool is not installed (``metalm download pool``).
    """
    reader = READERS.get(dataset)
    if reader is None:
        raise TaskError("source.name", f"no pool data set {dataset!r} (known: {', '.join(READERS)})", source)
    try:
        rows = reader(subset or "", split)
    except DataNotFoundError:
        raise  # the pool is not installed: the error names the command
    except (FileNotFoundError, KeyError) as err:
        raise TaskError("source", f"pool {dataset}: no subset {subset!r} / split {split!r} ({err})", source) from None
    if not rows:
        raise TaskError("source", f"pool {dataset}: subset {subset!r}, split {split!r} has no examples", source)
    return rows

