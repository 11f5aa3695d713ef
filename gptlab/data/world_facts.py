"""miniworld fact helpers: placeholder values, picking a fact, wrong values, answer forms.

A *fact* is a dict {"subject", "relation", "answer", "vals", "bare"}: `vals` fills the
template placeholders of world_templates.py, `answer` is the kb value (meta["answer"]),
`bare` the shortest answer string ("Paris", "66987244").
"""

from __future__ import annotations

from gptlab.data.world_kb import CONTINENTS_ZH
from gptlab.data.world_templates import ANSWERS, CONTINENT_ADJ

COUNTRY_RELATIONS = ["capital", "continent", "population", "area", "currency", "languages",
                     "neighbours"]
CITY_RELATIONS = ["city_country", "city_population"]
RELATIONS = COUNTRY_RELATIONS + CITY_RELATIONS
NUMERIC = {"population", "area", "city_population"}
TOLERANCE = 0.05        # relative tolerance written into meta for numeric kb facts
CONTINENT_NAMES = ["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]


def join_names(names: list[str], conj: str = "and") -> str:
    """'A', 'A and B', 'A, B and C'."""
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + f" {conj} " + names[-1]


def country_vals(c: dict, by_code: dict) -> dict:
    """Placeholder values for one country."""
    nbrs = [by_code[n] for n in c["neighbours"] if n in by_code]
    return {
        "c": c["name"], "zh": c["name_zh"], "capital": c["capital"], "continent": c["continent"],
        "continent_adj": CONTINENT_ADJ[c["continent"]], "continent_zh": CONTINENTS_ZH[c["continent"]],
        "pop": str(c["population"]), "area": str(c["area_km2"]), "currency": c["currency_name"],
        "code": c["currency_code"], "langs": join_names(c["languages"]),
        "lang1": c["languages"][0] if c["languages"] else "", "lc": c["largest_city"],
        "nbrs": join_names([n["name"] for n in nbrs]),
        "nbrs_zh": "、".join(n["name_zh"] for n in nbrs),
        "currency_zh": c["currency_name_zh"] or c["currency_name"],
        "langs_zh": "、".join(z or e for z, e in zip(c["languages_zh"], c["languages"])),
    }


def has_chinese(c: dict, relation: str) -> bool:
    """Whether a Chinese answer about `relation` can avoid every Latin-script name."""
    if relation == "currency":
        return bool(c["currency_name_zh"])
    if relation == "languages":
        return bool(c["languages_zh"]) and all(c["languages_zh"])
    if relation == "neighbours":
        return bool(c["neighbours"])
    return relation in ("continent", "population", "area")


def city_vals(city: dict, by_code: dict) -> dict:
    vals = country_vals(by_code[city["country"]], by_code)
    vals.update({"city": city["name"], "cpop": str(city["population"])})
    return vals


class FactPicker:
    """Picks facts about the train or held-out entities of a kb, with one rng."""

    def __init__(self, rng, kb: dict):
        self.rng = rng
        self.by_code = {c["code"]: c for c in kb["countries"]}
        held_c = set(kb["heldout"]["countries"])
        held_city = set(kb["heldout"]["cities"])
        self.countries = {
            "train": [c for c in kb["countries"] if c["code"] not in held_c],
            "heldout": [c for c in kb["countries"] if c["code"] in held_c]}
        self.cities = {
            "train": [c for c in kb["cities"] if c["name"] not in held_city],
            "heldout": [c for c in kb["cities"] if c["name"] in held_city]}
        self.fakes = {s: [f for f in kb["fake_entities"] if f["split"] == s]
                      for s in ("train", "heldout")}

    def fact(self, split: str, relation: str) -> dict:
        """A random fact of `relation` about an entity of `split`."""
        if relation in CITY_RELATIONS:
            return self.city_fact(self.rng.choice(self.cities[split]), relation)
        while True:
            c = self.rng.choice(self.countries[split])
            if relation == "neighbours" and not c["neighbours"]:
                continue
            if relation == "languages" and not c["languages"]:
                continue
            return self.country_fact(c, relation)

    def country_fact(self, c: dict, relation: str) -> dict:
        vals = country_vals(c, self.by_code)
        answer = {
            "capital": c["capital"], "continent": c["continent"], "population": c["population"],
            "area": c["area_km2"], "currency": c["currency_name"], "languages": list(c["languages"]),
            "neighbours": [self.by_code[n]["name"] for n in c["neighbours"]],
        }[relation]
        bare = join_names(answer) if isinstance(answer, list) else str(answer)
        return {"subject": c["code"], "relation": relation, "answer": answer, "vals": vals,
                "bare": bare, "entity": c["name"]}

    def city_fact(self, city: dict, relation: str) -> dict:
        vals = city_vals(city, self.by_code)
        answer = self.by_code[city["country"]]["name"] if relation == "city_country" \
            else city["population"]
        return {"subject": city["name"], "relation": relation, "answer": answer, "vals": vals,
                "bare": str(answer), "entity": city["name"]}

    def wrong(self, fact: dict, split: str) -> dict:
        """Placeholder overrides that make the fact false, plus {"wrong": display value}."""
        rel, vals, rng = fact["relation"], fact["vals"], self.rng
        if rel == "capital":
            cands = [c["name"] for c in self.cities[split]
                     if c["country"] == fact["subject"] and c["name"] != vals["capital"]]
            if not cands:
                cands = [c["capital"] for c in self.countries[split]
                         if c["continent"] == vals["continent"] and c["capital"] != vals["capital"]]
            w = rng.choice(cands or ["Atlantis City"])
            return {"capital": w, "wrong": w}
        if rel == "continent":
            w = rng.choice([x for x in CONTINENT_NAMES if x != vals["continent"]])
            return {"continent": w, "wrong": w}
        if rel in NUMERIC:
            key = {"population": "pop", "area": "area", "city_population": "cpop"}[rel]
            w = str(max(1, int(int(vals[key]) * rng.choice([0.3, 0.5, 2, 3]))))
            return {key: w, "wrong": w}
        if rel == "currency":
            other = rng.choice([c for c in self.countries[split]
                                if c["currency_name"] != vals["currency"]])
            return {"currency": other["currency_name"], "code": other["currency_code"],
                    "wrong": other["currency_name"]}
        if rel == "city_country":
            home = self.by_code[self._city(fact["subject"])["country"]]
            pool = [self.by_code[n] for n in home["neighbours"]
                    if n in self.by_code and self.by_code[n] in self.countries[split]]
            other = rng.choice(pool or [c for c in self.countries[split] if c is not home])
            return {"c": other["name"], "wrong": other["name"]}
        raise ValueError(f"no wrong value for relation {rel}")

    def _city(self, name: str) -> dict:
        return next(c for s in self.cities.values() for c in s if c["name"] == name)

    def sentence(self, fact: dict, overrides: dict | None = None) -> str:
        """A full English answer sentence (optionally with false values substituted)."""
        rel = fact["relation"]
        if rel == "languages" and len(fact["answer"]) == 1:
            rel = "languages1"
        vals = dict(fact["vals"], **(overrides or {}))
        return self.rng.choice(ANSWERS[rel]).format(**vals)
