"""miniworld template tables, read from world_templates.toml (the wordings are data: edit
them there; the generators live in world_corpus.py / world_chat.py).

Two kinds of tables:
- corpus sentences (CORPUS_EN / CORPUS_ZH): statements used in pretraining documents;
- chat templates, each pool split into "t" (train: SFT and RL prompts) and "h" (held out:
  eval only). A template's id is "<pool>.<key>.<t|h><index>", e.g. "qa.capital.h1"; the
  held-out ids go into kb["heldout"]["templates"] and their wordings never occur in SFT.

Placeholders: {c} country, {zh} Chinese country name, {capital}, {continent},
{continent_adj}, {continent_zh}, {pop}, {area}, {currency}, {code}, {langs}, {lang1},
{nbrs}, {lc} largest city, {city}, {cpop} city population, {wrong}, {right}, {q}, {keys},
{n}, {a}, {b}, {x}.
"""

from gptlab.fileio import read_package_toml

_TABLES = read_package_toml(__package__, "world_templates.toml")
# Module names, one per table of the file: CONTINENT_ADJ, CORPUS_EN, CORPUS_ZH, QUESTIONS,
# QUESTIONS_VARIED, QUESTIONS_ZH, QA_FRAMES, ANSWERS, ANSWERS_MID, ANSWERS_ZH, ZH_FILLERS,
# FOLLOWUPS, SWITCH, PLAIN_SYSTEM, SYSTEM, PERSONAS, OVERRIDES, FALSE_PREMISE, FP_ANSWERS,
# DISPUTE_HOLD, HOLD_REPLIES, DISPUTE_ADMIT, ADMIT_REPLIES, UNKNOWN_REPLIES, FACT_COMPLETION.
globals().update(_TABLES)

# A city's population is worded like a country's ({cpop} of {city}), except the sentences that
# name the country's continent.
_TABLES["CORPUS_EN"]["city_population"] = [
    t.replace("{pop}", "{cpop}").replace("{c}", "{city}")
    for t in _TABLES["CORPUS_EN"]["population"] if "{continent}" not in t]
