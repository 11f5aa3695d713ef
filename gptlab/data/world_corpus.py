"""miniworld pretraining corpus: encyclopedia-style documents built from kb facts.

Facts are learned from text: every country (held-out ones included) gets several documents,
each mixing a random subset of its facts in random order, each fact in a random paraphrase
(>= 20 English templates per relation in world_templates.CORPUS_EN). Other documents combine
facts across entities (continent overviews, city lists, comparisons), some are in Chinese,
and some are arithmetic / unit-conversion worked examples. Fake entities never appear.
"""

from __future__ import annotations

from gptlab.data.world_facts import city_vals, country_vals, join_names
from gptlab.data.world_math import MATH_CORPUS, math_problem, worked_addition
from gptlab.data.world_templates import CORPUS_EN, CORPUS_ZH

_COUNTRY_RELS = ["capital", "population", "area", "currency", "languages", "neighbours",
                 "largest_city", "name_zh", "cities"]


def _sentence(rng, rel: str, vals: dict, table=CORPUS_EN) -> str:
    return rng.choice(table[rel]).format(**vals)


def _country_sentence(rng, rel: str, c: dict, vals: dict, cities: list[dict]) -> str | None:
    if rel == "neighbours" and not c["neighbours"]:
        return _sentence(rng, "no_neighbours", vals)
    if rel == "largest_city" and c["largest_city"] == c["capital"] and rng.random() < 0.5:
        return _sentence(rng, "capital_is_largest", vals)
    if rel == "cities":
        names = [x["name"] for x in cities if x["country"] == c["code"]]
        if len(names) < 2:
            return None
        picked = rng.sample(names, min(len(names), rng.randint(2, 5)))
        return f"Cities in {c['name']} include {join_names(picked)}."
    return _sentence(rng, rel, vals)


def country_doc(rng, c: dict, by_code: dict, cities: list[dict]) -> str:
    """One English article about a country: intro + a shuffled subset of its facts."""
    vals = country_vals(c, by_code)
    rels = rng.sample(_COUNTRY_RELS, rng.randint(3, len(_COUNTRY_RELS)))
    if rng.random() < 0.6:
        rels = [r for r in rels if r != "capital"]
        rels.insert(rng.randint(0, 1), "capital")
    sents = [_sentence(rng, "continent", vals)]
    sents += [s for s in (_country_sentence(rng, r, c, vals, cities) for r in rels) if s]
    if rng.random() < 0.3:
        sents = sents[1:] + sents[:1]
    body = _paragraphs(rng, sents)
    return f"{c['name']}\n\n{body}" if rng.random() < 0.5 else body


def _paragraphs(rng, sents: list[str]) -> str:
    if len(sents) > 4 and rng.random() < 0.5:
        cut = rng.randint(2, len(sents) - 2)
        return " ".join(sents[:cut]) + "\n\n" + " ".join(sents[cut:])
    return " ".join(sents)


def country_doc_zh(rng, c: dict, by_code: dict) -> str:
    """A short Chinese article about a country (Latin-script names where no Chinese exists)."""
    vals = country_vals(c, by_code)
    rels = [r for r in CORPUS_ZH if r != "neighbours" or c["neighbours"]]
    rels = rng.sample(rels, rng.randint(3, len(rels)))
    sents = [_sentence(rng, "continent", vals, CORPUS_ZH)]
    sents += [_sentence(rng, r, vals, CORPUS_ZH) for r in rels if r != "continent"]
    return "".join(sents)


def city_doc(rng, city: dict, by_code: dict) -> str:
    vals = city_vals(city, by_code)
    country = by_code[city["country"]]
    sents = [_sentence(rng, "city_country", vals), _sentence(rng, "city_population", vals)]
    rng.shuffle(sents)
    if country["capital"] == city["name"]:
        sents.append(_sentence(rng, "capital", vals))
    elif country["largest_city"] == city["name"]:
        sents.append(_sentence(rng, "largest_city", vals))
    if rng.random() < 0.5:
        sents.append(_sentence(rng, "continent", vals))
    return " ".join(sents)


def multi_doc(rng, countries: list[dict], by_code: dict) -> str:
    """Several countries of one continent, one or two facts each."""
    continent = rng.choice(sorted({c["continent"] for c in countries}))
    pool = [c for c in countries if c["continent"] == continent]
    picked = rng.sample(pool, min(len(pool), rng.randint(3, 6)))
    rels = rng.sample(["capital", "population", "area", "currency", "languages", "largest_city"], 2)
    head = f"Countries of {continent}\n\nThis overview covers {join_names([c['name'] for c in picked])}."
    sents = []
    for c in picked:
        vals = country_vals(c, by_code)
        sents += [_sentence(rng, r, vals) for r in rels[: rng.randint(1, 2)]]
    return head + " " + " ".join(sents)


def compare_doc(rng, countries: list[dict]) -> str:
    a, b = rng.sample(countries, 2)
    if rng.random() < 0.5:
        big, small = (a, b) if a["population"] >= b["population"] else (b, a)
        return (f"{big['name']} has more people than {small['name']}: about {big['population']} "
                f"compared with about {small['population']}.")
    big, small = (a, b) if a["area_km2"] >= b["area_km2"] else (b, a)
    return (f"{big['name']} is larger than {small['name']}. {big['name']} covers {big['area_km2']} "
            f"square kilometres, while {small['name']} covers {small['area_km2']} square kilometres.")


def math_doc(rng) -> str:
    """Arithmetic drills, a worked column addition, and unit conversions."""
    lines = []
    for _ in range(rng.randint(4, 10)):
        op = rng.choice(list(MATH_CORPUS))
        p = math_problem(rng, op)
        lines.append(rng.choice(MATH_CORPUS[op]).format(**p["vals"]))
    if rng.random() < 0.5:
        lines.append(worked_addition(rng))
    title = rng.choice(["Arithmetic practice", "Math facts", "Unit conversions and sums", ""])
    body = " ".join(lines)
    return f"{title}\n\n{body}" if title else body


def build_corpus(rng, kb: dict, cfg: dict) -> list[str]:
    """All corpus documents, shuffled. `cfg` gives per-scale document counts."""
    by_code = {c["code"]: c for c in kb["countries"]}
    countries, cities = kb["countries"], kb["cities"]
    docs = []
    for _ in range(cfg["docs_per_country"]):
        docs += [country_doc(rng, c, by_code, cities) for c in countries]
    n_zh = int(len(countries) * cfg["zh_per_country"])
    docs += [country_doc_zh(rng, rng.choice(countries), by_code) for _ in range(n_zh)]
    for _ in range(cfg["docs_per_city"]):
        docs += [city_doc(rng, c, by_code) for c in cities]
    docs += [multi_doc(rng, countries, by_code) for _ in range(cfg["multi_docs"])]
    docs += [compare_doc(rng, countries) for _ in range(cfg["compare_docs"])]
    docs += [math_doc(rng) for _ in range(cfg["math_docs"])]
    rng.shuffle(docs)
    return docs
