"""miniworld chat records: SFT conversations, RL / rating prompts and held-out eval prompts.

One maker per category (`ChatMaker.qa`, `.multiturn`, `.system`, ...) returns a full
conversation ending with the reference assistant turn plus its `meta` (see
docs/MINIWORLD_SCHEMA.md). `split="train"` draws train entities and "t" templates (SFT and
prompts/), `split="heldout"` draws held-out entities and "h" templates (eval/). Train
records that mention a held-out name are dropped, so held-out sets stay disjoint from SFT
by entity and by template.
"""

from __future__ import annotations

import json
import random
import re

from gptlab.data import world_requests as R
from gptlab.data import world_templates as T
from gptlab.data.world_facts import (CITY_RELATIONS, COUNTRY_RELATIONS, NUMERIC, RELATIONS,
                                     TOLERANCE, FactPicker, has_chinese)
from gptlab.data.world_kb import heldout_matcher
from gptlab.data.world_math import ARITH, ARITH_ANSWERS, math_problem

CATEGORIES = ["qa", "multiturn", "system", "conflict", "false_premise", "pushback_hold",
              "pushback_admit", "harmful", "benign_edgy", "unknown_entity", "arithmetic"]
# benign_edgy as large as harmful and then some: with fewer benign look-alikes than harmful
# requests a small model learns "trigger word -> refuse" (docs/RESULTS.md, over-refusal)
SFT_SHARES = {"qa": 0.21, "multiturn": 0.10, "system": 0.15, "conflict": 0.06,
              "false_premise": 0.07, "pushback_hold": 0.05, "pushback_admit": 0.05,
              "harmful": 0.08, "benign_edgy": 0.12, "unknown_entity": 0.05, "arithmetic": 0.06}
SHORT_RELATIONS = ["capital", "continent", "population", "area", "currency", "city_country",
                   "city_population"]
PUSH_RELATIONS = SHORT_RELATIONS[:-1]
CONSTRAINT_TYPES = ["json", "zh", "en", "upper", "lower", "max_words", "one_word", "persona"]
JSON_REL_KEY = {"capital": "capital", "continent": "continent", "population": "population",
                "area": "area_km2", "currency": "currency", "languages": "languages",
                "neighbours": "neighbours", "city_country": "country",
                "city_population": "population"}
PLAIN_SYSTEM_P = 0.3     # share of qa / safety chats that carry a plain system message
FRAME_P = 0.35           # varied wordings: share of train qa / unknown_entity questions framed


# --------------------------------------------------------------------------- templates

def template_pools(varied: bool = False) -> dict[str, dict]:
    """Every chat template pool by id prefix; ids are f"{prefix}.{t|h}{index}". `varied`: the
    QA pools' train wordings extended by QUESTIONS_VARIED (held-out ones never change)."""
    pools: dict[str, dict] = {"fu.switch": T.SWITCH, "sys.plain": T.PLAIN_SYSTEM, "frame": T.QA_FRAMES,
                              "push.hold": T.DISPUTE_HOLD, "push.admit": T.DISPUTE_ADMIT,
                              "benign": {k: [q for q, _ in v] for k, v in R.BENIGN.items()}}
    for group, table in [("qa", T.QUESTIONS), ("qa_zh", T.QUESTIONS_ZH), ("fu", T.FOLLOWUPS),
                         ("sys", T.SYSTEM), ("ovr", T.OVERRIDES), ("fp", T.FALSE_PREMISE),
                         ("math", ARITH)]:
        for key, pool in table.items():
            pools[f"{group}.{key}"] = pool
    for name, p in T.PERSONAS.items():
        pools[f"sys.persona.{name}"] = p
    if varied:
        for rel, more in T.QUESTIONS_VARIED.items():
            pools[f"qa.{rel}"] = {"t": pools[f"qa.{rel}"]["t"] + more, "h": pools[f"qa.{rel}"]["h"]}
    for cat, pool in R.HARMFUL.items():
        pools[f"harm.{_slug(cat)}"] = pool
    for rel, pool in T.FACT_COMPLETION.items():   # base-model prompts: eval only
        pools[f"fc.{rel}"] = {"t": [], "h": pool}
    return pools


def heldout_template_texts() -> dict[str, str]:
    """{template id: wording} of every held-out ("h") template."""
    return {f"{prefix}.h{i}": text for prefix, pool in template_pools().items()
            for i, text in enumerate(pool["h"])}


def template_regex(text: str) -> re.Pattern:
    """A template as a regex: literal text, each {placeholder} matching anything."""
    parts = re.split(r"\{[a-z_0-9]+\}", text)
    return re.compile(".+?".join(re.escape(p) for p in parts))


def _slug(category: str) -> str:
    return category.replace("/", "_").replace("-", "_")


# --------------------------------------------------------------------------- text checks

def cjk_ratio(text: str) -> float:
    """CJK characters / (CJK characters + ASCII letters); digits and punctuation ignored."""
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    latin = sum(1 for ch in text if ch.isascii() and ch.isalpha())
    return cjk / max(1, cjk + latin)


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _meta(kind, split, template, subject=None, relation=None, answer=None, constraints=(),
          harmful=False, category=None, tolerance=None) -> dict:
    m = {"kind": kind, "subject": subject, "relation": relation, "answer": answer,
         "constraints": list(constraints), "harmful": harmful, "category": category,
         "template": template, "split": split}
    if tolerance is not None:
        m["tolerance"] = tolerance
    return m


def _fact_meta(kind, split, template, fact, constraints=()) -> dict:
    tol = TOLERANCE if fact["relation"] in NUMERIC else None
    return _meta(kind, split, template, fact["subject"], fact["relation"], fact["answer"],
                 constraints, tolerance=tol)


# --------------------------------------------------------------------------- the makers

class ChatMaker:
    """Builds one record of any category for the train or held-out split."""

    def __init__(self, rng, kb: dict, varied: bool = False):
        self.rng = rng
        self.f = FactPicker(rng, kb)
        self.varied = varied          # `gptlab data world --varied-wordings`
        self.pools = template_pools(varied)

    def use_rng(self, rng) -> None:
        self.rng = self.f.rng = rng

    # -- helpers
    def pick(self, prefix: str, split: str) -> tuple[str, str]:
        key = "t" if split == "train" else "h"
        pool = self.pools[prefix][key]
        i = self.rng.randrange(len(pool))
        return f"{prefix}.{key}{i}", pool[i]

    def question(self, fact: dict, split: str, zh: bool = False) -> tuple[str, str]:
        tid, t = self.pick(f"qa{'_zh' if zh else ''}.{fact['relation']}", split)
        return tid, t.format(**fact["vals"])

    def framed(self, tid: str, q: str, split: str) -> tuple[str, str]:
        """With varied wordings, a train question sometimes inside a framing ("Settle a bet for
        me: ..."). Otherwise, and for held-out questions, the question as it is, without a
        draw from the rng (so the eval sets and the default SFT sets stay byte-identical)."""
        if not self.varied or split != "train" or self.rng.random() >= FRAME_P:
            return tid, q
        fid, frame = self.pick("frame", split)
        return f"{tid}+{fid}", frame.format(q=q)

    def plain_system(self, split: str) -> tuple[list[dict], list[str]]:
        if self.rng.random() >= PLAIN_SYSTEM_P:
            return [], []
        tid, text = self.pick("sys.plain", split)
        return [_msg("system", text)], [tid]

    def short_fact(self, split: str, relations: list[str], one_word=False, zh=False) -> dict:
        while True:
            fact = self.f.fact(split, self.rng.choice(relations))
            if one_word and " " in fact["bare"]:
                continue
            if zh and not has_chinese(self.f.by_code[fact["subject"]], fact["relation"]):
                continue
            return fact

    # -- factual chats
    def qa(self, split: str) -> dict:
        fact = self.f.fact(split, self.rng.choice(RELATIONS))
        tid, q = self.framed(*self.question(fact, split), split)
        sys_msgs, sys_ids = self.plain_system(split)
        msgs = sys_msgs + [_msg("user", q), _msg("assistant", self.f.sentence(fact))]
        return {"messages": msgs, "meta": _fact_meta("qa", split, "+".join([tid] + sys_ids), fact)}

    def multiturn(self, split: str) -> dict:
        fact = self.f.fact(split, self.rng.choice(COUNTRY_RELATIONS))
        tid, q = self.question(fact, split)
        msgs, ids = [_msg("user", q), _msg("assistant", self.f.sentence(fact))], [tid]
        for _ in range(self.rng.randint(1, 2)):
            fact, fid, text = self._follow_up(fact, split)
            msgs += [_msg("user", text), _msg("assistant", self.f.sentence(fact))]
            ids.append(fid)
        return {"messages": msgs, "meta": _fact_meta("multiturn", split, "+".join(ids), fact)}

    def _follow_up(self, prev: dict, split: str) -> tuple[dict, str, str]:
        c = self.f.by_code[prev["subject"]]
        if self.rng.random() < 0.3:        # same relation, another country
            other = self.rng.choice([x for x in self.f.countries[split] if x is not c
                                     and (prev["relation"] != "neighbours" or x["neighbours"])])
            fid, t = self.pick("fu.switch", split)
            return self.f.country_fact(other, prev["relation"]), fid, t.format(c=other["name"])
        rels = [r for r in T.FOLLOWUPS if r != prev["relation"]
                and (r != "neighbours" or c["neighbours"]) and (r != "languages" or c["languages"])]
        rel = self.rng.choice(rels)
        fid, text = self.pick(f"fu.{rel}", split)
        return self.f.country_fact(c, rel), fid, text

    # -- system messages
    def system(self, split: str) -> dict:
        ctype = self.rng.choice(CONSTRAINT_TYPES + ["case+max_words"])
        s = self._constrained(split, ctype)
        msgs = [_msg("system", s["system"]), _msg("user", s["question"]),
                _msg("assistant", s["answer"])]
        tid = "+".join([s["qid"]] + s["sys_ids"])
        return {"messages": msgs, "meta": _fact_meta("system", split, tid, s["fact"], s["constraints"])}

    def conflict(self, split: str) -> dict:
        ctype = self.rng.choice(CONSTRAINT_TYPES)
        s = self._constrained(split, ctype)
        group = "any" if self.rng.random() < 0.25 else ctype
        oid, ovr = self.pick(f"ovr.{group}", split)
        user = ovr.format(q=s["question"], persona=s.get("persona", ""))
        msgs = [_msg("system", s["system"]), _msg("user", user), _msg("assistant", s["answer"])]
        tid = "+".join([s["qid"]] + s["sys_ids"] + [oid])
        return {"messages": msgs, "meta": _fact_meta("conflict", split, tid, s["fact"], s["constraints"])}

    def _constrained(self, split: str, ctype: str) -> dict:
        """System message of one constraint type, a fitting question, and the obeying answer."""
        rng = self.rng
        if ctype == "zh":
            fact = self.short_fact(split, list(T.ANSWERS_ZH), zh=True)
        elif ctype == "en":
            fact = self.short_fact(split, list(T.QUESTIONS_ZH))
        elif ctype in ("max_words", "case+max_words"):
            fact = self.short_fact(split, SHORT_RELATIONS)
        elif ctype == "one_word":
            fact = self.short_fact(split, SHORT_RELATIONS, one_word=True)
        else:
            fact = self.f.fact(split, rng.choice(RELATIONS))
        zh_q = ctype == "en" or (ctype == "zh" and fact["relation"] in T.QUESTIONS_ZH
                                 and rng.random() < 0.3)
        qid, q = self.question(fact, split, zh=zh_q)
        out = {"fact": fact, "qid": qid, "question": q}
        out.update(self._system_message(split, ctype, fact))
        out["answer"] = self.render(fact, out["constraints"])
        return out

    def _system_message(self, split: str, ctype: str, fact: dict) -> dict:
        if ctype == "case+max_words":
            a = self._system_message(split, self.rng.choice(["upper", "lower"]), fact)
            b = self._system_message(split, "max_words", fact)
            return {"system": a["system"] + " " + b["system"], "sys_ids": a["sys_ids"] + b["sys_ids"],
                    "constraints": a["constraints"] + b["constraints"]}
        if ctype == "persona":
            name = self.rng.choice(sorted(T.PERSONAS))
            sid, text = self.pick(f"sys.persona.{name}", split)
            c = {"type": "persona", "value": name, "marker": T.PERSONAS[name]["marker"]}
            return {"system": text, "sys_ids": [sid], "constraints": [c], "persona": name}
        sid, text = self.pick(f"sys.{ctype}", split)
        if ctype == "json":
            keys = self._json_keys(fact)
            c = {"type": "json", "keys": keys}
            text = text.format(keys=", ".join(f'"{k}"' for k in keys))
        elif ctype in ("zh", "en"):
            c = {"type": "language", "value": ctype}
        elif ctype in ("upper", "lower"):
            c = {"type": "case", "value": ctype}
        elif ctype == "max_words":
            n = self.rng.randint(max(3, len(fact["bare"].split())), 12)
            c = {"type": "max_words", "value": n}
            text = text.format(n=n)
        else:
            c = {"type": "one_word"}
        return {"system": text, "sys_ids": [sid], "constraints": [c]}

    @staticmethod
    def _json_keys(fact: dict) -> list[str]:
        ent = "city" if fact["relation"] in CITY_RELATIONS else "country"
        return [ent, JSON_REL_KEY[fact["relation"]]]

    def render(self, fact: dict, constraints: list[dict]) -> str:
        """An answer to `fact` that obeys every constraint."""
        types = {c["type"]: c for c in constraints}
        if "json" in types:
            keys = types["json"]["keys"]
            text = json.dumps({keys[0]: fact["entity"], keys[1]: fact["answer"]}, ensure_ascii=False)
        elif types.get("language", {}).get("value") == "zh":
            text = self._render_zh(fact)
        elif "one_word" in types:
            text = fact["bare"]
        elif "max_words" in types:
            text = self._fit_words(fact, types["max_words"]["value"])
        else:
            text = self.f.sentence(fact)
        if "persona" in types:
            text = self.rng.choice(T.PERSONAS[types["persona"]["value"]]["wrap"]).format(s=text)
        if "case" in types:
            text = text.upper() if types["case"]["value"] == "upper" else text.lower()
        return text

    def _render_zh(self, fact: dict) -> str:
        text = self.rng.choice(T.ANSWERS_ZH[fact["relation"]]).format(**fact["vals"])
        fillers = self.rng.sample(T.ZH_FILLERS, len(T.ZH_FILLERS))
        while fillers and self.rng.random() < 0.3:
            text += fillers.pop()
        return text

    def _fit_words(self, fact: dict, n: int) -> str:
        cands = [t.format(**fact["vals"]) for t in T.ANSWERS[fact["relation"]]]
        cands += [t.format(v=fact["bare"]) for t in T.ANSWERS_MID] + [fact["bare"]]
        return self.rng.choice([c for c in cands if len(c.split()) <= n])

    # -- premises and pushback
    def false_premise(self, split: str) -> dict:
        fact = self.f.fact(split, self.rng.choice(sorted(T.FALSE_PREMISE)))
        vals = dict(fact["vals"], wrong=self.f.wrong(fact, split)["wrong"])
        tid, q = self.pick(f"fp.{fact['relation']}", split)
        answer = self.rng.choice(T.FP_ANSWERS[fact["relation"]]).format(**vals)
        msgs = [_msg("user", q.format(**vals)), _msg("assistant", answer)]
        return {"messages": msgs, "meta": _fact_meta("false_premise", split, tid, fact)}

    def pushback_hold(self, split: str) -> dict:
        fact = self.f.fact(split, self.rng.choice(PUSH_RELATIONS))
        qid, q = self.question(fact, split)
        did, dispute = self.pick("push.hold", split)
        wrong = self.f.wrong(fact, split)["wrong"]
        reply = self.rng.choice(T.HOLD_REPLIES).format(fact=self.f.sentence(fact))
        msgs = [_msg("user", q), _msg("assistant", self.f.sentence(fact)),
                _msg("user", dispute.format(wrong=wrong)), _msg("assistant", reply)]
        return {"messages": msgs, "meta": _fact_meta("pushback_hold", split, f"{qid}+{did}", fact)}

    def pushback_admit(self, split: str) -> dict:
        fact = self.f.fact(split, self.rng.choice(PUSH_RELATIONS))
        qid, q = self.question(fact, split)
        did, dispute = self.pick("push.admit", split)
        wrong_answer = self.f.sentence(fact, self.f.wrong(fact, split))
        reply = self.rng.choice(T.ADMIT_REPLIES).format(fact=self.f.sentence(fact))
        msgs = [_msg("user", q), _msg("assistant", wrong_answer),
                _msg("user", dispute.format(right=fact["bare"])), _msg("assistant", reply)]
        meta = _fact_meta("pushback_admit", split, f"{qid}+{did}", fact)
        meta["masked_turns"] = [1]        # the deliberately wrong turn: never train on it
        return {"messages": msgs, "meta": meta}

    # -- safety
    def harmful(self, split: str) -> dict:
        cat = self.rng.choice(sorted(R.HARMFUL))
        tid, request = self.pick(f"harm.{_slug(cat)}", split)
        refusal = self.rng.choice(R.SELF_HARM_REFUSALS if cat == "self-harm" else R.REFUSALS)
        answer = refusal + " " + self.rng.choice(R.SAFE_ALTERNATIVES[cat])
        sys_msgs, sys_ids = self.plain_system(split)
        msgs = sys_msgs + [_msg("user", self._prefixed(request)),
                           _msg("assistant", answer)]
        meta = _meta("harmful", split, "+".join([tid] + sys_ids), harmful=True, category=cat)
        return {"messages": msgs, "meta": meta}

    def benign_edgy(self, split: str) -> dict:
        tid, _ = self.pick("benign", split)
        q, a = R.BENIGN[tid.split(".")[1][0]][int(tid.split(".")[1][1:])]
        sys_msgs, sys_ids = self.plain_system(split)
        msgs = sys_msgs + [_msg("user", self._prefixed(q)), _msg("assistant", a)]
        return {"messages": msgs, "meta": _meta("benign_edgy", split, "+".join([tid] + sys_ids))}

    def _prefixed(self, text: str) -> str:
        """Optionally open with "Hey, " etc., lower-casing the request after a comma."""
        prefix = self.rng.choice(R.USER_PREFIXES)
        if prefix.endswith(", ") and not re.match(r"I\b", text):
            text = text[0].lower() + text[1:]
        return prefix + text

    def unknown_entity(self, split: str) -> dict:
        fake = self.rng.choice(self.f.fakes[split])
        rels = CITY_RELATIONS if fake["kind"] == "city" else COUNTRY_RELATIONS[:6]
        rel = self.rng.choice(rels)
        tid, q = self.pick(f"qa.{rel}", split)
        tid, q = self.framed(tid, q.format(c=fake["name"], city=fake["name"]), split)
        answer = self.rng.choice(T.UNKNOWN_REPLIES[fake["kind"]]).format(x=fake["name"])
        msgs = [_msg("user", q), _msg("assistant", answer)]
        return {"messages": msgs, "meta": _meta("unknown_entity", split, tid, fake["name"], rel)}

    def arithmetic(self, split: str) -> dict:
        op = self.rng.choice(sorted(ARITH))
        p = math_problem(self.rng, op)
        tid, q = self.pick(f"math.{op}", split)
        msgs = [_msg("user", q.format(**p["vals"])),
                _msg("assistant", ARITH_ANSWERS[op].format(**p["vals"]))]
        meta = _meta("arithmetic", split, tid, None, p["relation"], p["answer"],
                     tolerance=p["tolerance"])
        return {"messages": msgs, "meta": meta}


# --------------------------------------------------------------------------- collection

def _collect(make, n: int, ok, allow_dups: bool) -> list[dict]:
    """n records from `make`, each passing `ok`. SFT (allow_dups) prefers unique
    conversations but repeats when a category runs out; prompt sets keep unique prompts
    (messages without the reference answer) and may come out shorter than n."""
    out, seen, tries = [], set(), 0
    while len(out) < n:
        tries += 1
        if tries > 40 * n + 2000:
            if allow_dups:
                raise RuntimeError("miniworld: could not build enough records")
            break
        rec = make()
        if not ok(rec):
            continue
        msgs = rec["messages"] if allow_dups else rec["messages"][:-1]
        key = json.dumps(msgs, sort_keys=True, ensure_ascii=False)
        if key in seen and (not allow_dups or tries < 10 * n):
            continue
        seen.add(key)
        out.append(rec)
    return out


def to_prompt(rec: dict) -> dict:
    """A conversation -> {"messages": prefix ending with a user turn, "reference", "meta"}."""
    return {"messages": rec["messages"][:-1], "reference": rec["messages"][-1]["content"],
            "meta": rec["meta"]}


def fact_completion(rng, kb: dict, n: int) -> list[dict]:
    """Base-model prompts ("The capital of X is" -> "Paris") about held-out entities."""
    f = FactPicker(rng, kb)
    pools = template_pools()
    items = [(c, rel) for c in f.countries["heldout"] for rel in T.FACT_COMPLETION
             if rel != "city_country"] + [(c, "city_country") for c in f.cities["heldout"]]
    out = []
    for ent, rel in rng.sample(items, min(n, len(items))):
        fact = f.city_fact(ent, rel) if rel == "city_country" else f.country_fact(ent, rel)
        i = rng.randrange(len(pools[f"fc.{rel}"]["h"]))
        prompt = pools[f"fc.{rel}"]["h"][i].format(**fact["vals"])
        out.append({"prompt": prompt, "answer": fact["bare"],
                    "meta": _fact_meta("fact_completion", "heldout", f"fc.{rel}.h{i}", fact)})
    return out


def build_chat(rng, kb: dict, cfg: dict, varied: bool = False) -> dict:
    """{"sft": {cat: [records]}, "prompts": {...}, "eval": {...}} for one scale config.

    Each category's SFT, prompt and eval sets draw from their own rng, seeded from one draw
    of `rng`: editing one category's code or its train wordings leaves every other set, and
    every held-out eval set, byte-identical, so models trained before and after the edit
    are still measured on the same items. `varied`: more train question wordings and framings
    (`template_pools`, `ChatMaker.framed`)."""
    base = rng.getrandbits(64)

    def stream(name: str) -> random.Random:
        return random.Random(f"{base}:{name}")     # str seeds hash with sha512: stable

    maker = ChatMaker(stream("init"), kb, varied)
    mentions_heldout = heldout_matcher(kb)

    def clean(rec):
        return not any(mentions_heldout(m["content"]) for m in rec["messages"])

    out = {"sft": {}, "prompts": {}, "eval": {}}
    for cat in CATEGORIES:
        make = getattr(maker, cat)
        n_sft = max(2, round(cfg["sft_total"] * SFT_SHARES[cat]))
        maker.use_rng(stream(f"{cat}:sft"))
        out["sft"][cat] = _collect(lambda: make("train"), n_sft, clean, allow_dups=True)
        maker.use_rng(stream(f"{cat}:prompts"))
        prompts = _collect(lambda: make("train"), cfg["prompts_per_cat"], clean, allow_dups=False)
        out["prompts"][cat] = [to_prompt(r) for r in prompts]
        maker.use_rng(stream(f"{cat}:eval"))
        evals = _collect(lambda: make("heldout"), cfg["eval_per_cat"], lambda r: True,
                         allow_dups=False)
        out["eval"][cat] = [to_prompt(r) for r in evals]
    out["eval"]["fact_completion"] = fact_completion(stream("fact_completion"), kb,
                                                     cfg["fact_completion"])
    return out
