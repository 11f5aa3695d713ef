"""The gold judge's entity index: every name in miniworld's kb (English, Chinese, aliases)
and the Chinese names of continents, languages and currencies the kb does not spell out."""
from __future__ import annotations

import re

from gptlab.judge.text import is_cjk, norm

CONTINENT_ZH = {"Europe": ["欧洲"], "Asia": ["亚洲"], "Africa": ["非洲"],
                "North America": ["北美洲", "北美"], "South America": ["南美洲", "南美"],
                "Oceania": ["大洋洲"], "Antarctica": ["南极洲"]}
LANGUAGE_ZH = {
    "English": ["英语"], "French": ["法语"], "German": ["德语"], "Spanish": ["西班牙语"],
    "Portuguese": ["葡萄牙语"], "Italian": ["意大利语"], "Russian": ["俄语"],
    "Arabic": ["阿拉伯语"], "Chinese": ["汉语", "中文"], "Japanese": ["日语"],
    "Korean": ["韩语", "朝鲜语"], "Dutch": ["荷兰语"], "Swedish": ["瑞典语"],
    "Norwegian": ["挪威语"], "Danish": ["丹麦语"], "Finnish": ["芬兰语"], "Polish": ["波兰语"],
    "Greek": ["希腊语"], "Turkish": ["土耳其语"], "Hindi": ["印地语"], "Persian": ["波斯语"],
    "Hebrew": ["希伯来语"], "Thai": ["泰语"], "Vietnamese": ["越南语"], "Malay": ["马来语"],
    "Indonesian": ["印尼语", "印度尼西亚语"], "Swahili": ["斯瓦希里语"],
    "Ukrainian": ["乌克兰语"], "Czech": ["捷克语"], "Hungarian": ["匈牙利语"],
    "Romanian": ["罗马尼亚语"], "Bengali": ["孟加拉语"], "Urdu": ["乌尔都语"],
    "Icelandic": ["冰岛语"], "Irish": ["爱尔兰语"], "Catalan": ["加泰罗尼亚语"],
}
# Chinese currency names: a full kb name ("US Dollar") or a unit word that every currency
# named "... <unit>" shares ("Franc": 法郎 for all francs).
CURRENCY_ZH = {"Euro": ["欧元"], "US Dollar": ["美元"], "Canadian Dollar": ["加元", "加拿大元"],
               "Australian Dollar": ["澳元"], "Pound Sterling": ["英镑"], "Yen": ["日元"],
               "Yuan Renminbi": ["人民币"], "Swiss Franc": ["瑞士法郎"], "Won": ["韩元"],
               "Rupee": ["卢比"], "Ruble": ["卢布"], "Franc": ["法郎"], "Peso": ["比索"],
               "Dinar": ["第纳尔"], "Krone": ["克朗"], "Krona": ["克朗"], "Real": ["雷亚尔"]}
CURRENCY_ALIASES = {"Yuan Renminbi": ["yuan", "renminbi", "RMB"],
                    "New Israeli Sheqel": ["shekel", "shekels", "new shekel"],
                    "Pound Sterling": ["British pound", "sterling"]}


class KbIndex:
    """Every name in the kb (English, Chinese, aliases), matched longest-first on boundaries.

    Keys are (kind, id): ("country", "FR"), ("city", "paris"), ("continent", "europe"),
    ("currency", "euro"), ("language", "french"), ("fake", "veltravia").
    """

    def __init__(self, kb: dict):
        self.forms: dict[str, set[tuple[str, str]]] = {}
        self.countries = {c["code"]: c for c in kb.get("countries", [])}
        self.currency_codes: dict[str, str] = {}
        for c in kb.get("countries", []):
            self._add_country(c)
        self._add_currency_units([c["currency_name"] for c in kb.get("countries", [])
                                  if c.get("currency_name")])
        for city in kb.get("cities", []):
            self.add_all([city["name"], city.get("name_zh")], ("city", norm(city["name"])))
        for fake in kb.get("fake_entities", []):
            self.add(fake["name"], ("fake", norm(fake["name"])))
        self._add_chinese_names()
        self._regex = None

    def _add_chinese_names(self):
        """Chinese continent, language and currency names from the tables above."""
        seen = {k for keys in self.forms.values() for k in keys}
        for name, zh in CONTINENT_ZH.items():
            self.add_all([name, *zh], ("continent", norm(name)))
        for name, zh in LANGUAGE_ZH.items():
            if ("language", norm(name)) in seen:
                self.add_all(zh, ("language", norm(name)))
        for name, zh in CURRENCY_ZH.items():
            unit = norm(name)
            for key in [k for k in seen if k[0] == "currency"]:
                if key[1] == unit or (" " not in unit and unit in key[1].split()):
                    self.add_all(zh, key)

    def _add_country(self, c: dict):
        key = ("country", c["code"])
        self.add_all([c.get("name"), c.get("name_zh"), *c.get("aliases", []),
                      *c.get("aliases_zh", [])], key)
        if c.get("capital"):
            self.add_all([c["capital"], c.get("capital_zh")], ("city", norm(c["capital"])))
        if c.get("largest_city"):
            self.add_all([c["largest_city"], c.get("largest_city_zh")],
                         ("city", norm(c["largest_city"])))
        if c.get("continent"):
            self.add_all([c["continent"], c.get("continent_zh")],
                         ("continent", norm(c["continent"])))
        if c.get("currency_name"):
            cur = ("currency", norm(c["currency_name"]))
            self.add_all([c["currency_name"], c.get("currency_name_zh"),
                          *CURRENCY_ALIASES.get(c["currency_name"], [])], cur)
            if c.get("currency_code"):
                self.currency_codes[c["currency_code"]] = cur[1]
        for i, lang in enumerate(c.get("languages", [])):
            zh = (c.get("languages_zh") or [])[i:i + 1]
            self.add_all([lang, *zh], ("language", norm(lang)))

    def _add_currency_units(self, names: list[str]):
        """"US Dollar" is also "the dollar" and "dollars"; "CFA Franc BEAC" is "CFA francs".
        A unit is a word that ends some currency name in the kb."""
        units = {n.split()[-1].lower() for n in names}
        for name in names:
            words = name.split()
            for i, w in enumerate(words):
                if w.lower() in units:
                    for form in (w, " ".join(words[:i + 1])):
                        self.add_all([form, form + "s"], ("currency", norm(name)))

    def add(self, form, key):
        f = norm(form or "").strip()
        if len(f) >= 2 or (f and is_cjk(f[0])):
            if key not in self.forms.setdefault(f, set()):
                self.forms[f].add(key)
                self._regex = None

    def add_all(self, forms, key):
        for f in forms:
            self.add(f, key)

    def regex(self):
        if self._regex is None:
            forms = sorted(self.forms, key=len, reverse=True)
            lat = [re.escape(f) for f in forms if not any(is_cjk(c) for c in f)]
            cjk = [re.escape(f) for f in forms if any(is_cjk(c) for c in f)]
            parts = [r"(?<![a-z0-9])(?:" + "|".join(lat) + r")(?![a-z0-9])"] if lat else []
            parts += ["(?:" + "|".join(cjk) + ")"] if cjk else []
            self._regex = re.compile("|".join(parts) or r"(?!x)x")
        return self._regex

    def mentions(self, text_n: str) -> list[tuple[int, int, set]]:
        return [(m.start(), m.end(), self.forms[m.group(0)]) for m in self.regex().finditer(text_n)]

    def keys(self, value, kind: str) -> set:
        """The keys a meta answer / subject stands for (a code, a name in any language)."""
        if value is None:
            return set()
        if kind == "country" and value in self.countries:
            return {("country", value)}
        found = {k for k in self.forms.get(norm(str(value)).strip(), set()) if k[0] == kind}
        if not found:   # a value the kb lacks: index it on the fly
            key = (kind, norm(str(value)).strip())
            self.add(str(value), key)
            found = {key}
        return found

    def subject_keys(self, subject) -> set:
        if subject is None:
            return set()
        if subject in self.countries:
            return {("country", subject)}
        return {k for k in self.forms.get(norm(str(subject)).strip(), set())}

