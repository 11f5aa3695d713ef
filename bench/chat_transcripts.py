"""Eight `gptlab chat` transcripts, one per category, for docs/RESULTS.md: the first held-out
eval record of each category (not selected for success), its user turns typed into the real
terminal chat in order at temperature 0.

    python bench/chat_transcripts.py runs/demo/world runs/demo/final > transcripts.md

A piped chat does not echo what was typed, so each user line is put back before its reply.
"""
import json
import subprocess
import sys

CATEGORIES = ["qa", "system", "conflict", "harmful", "benign_edgy", "false_premise",
              "pushback_admit", "unknown_entity"]


def transcript(world: str, model: str, cat: str) -> str:
    with open(f"{world}/eval/{cat}.jsonl", encoding="utf-8") as f:
        msgs = json.loads(f.readline())["messages"]
    system = next((m["content"] for m in msgs if m["role"] == "system"), None)
    users = [m["content"].replace("\n", " ") for m in msgs if m["role"] == "user"]
    scripted = any(m["role"] == "assistant" for m in msgs)
    cmd = ["gptlab", "chat", "--model", model, "--temperature", "0", "--max-new-tokens", "128"]
    if system:
        cmd += ["--system", system]
    out = subprocess.run(cmd, input="".join(u + "\n" for u in users) + "/quit\n",
                         capture_output=True, text=True, check=True).stdout
    parts = out.split("you> ")
    text = parts[0] + "".join("you> " + (users[i] + "\n" if i < len(users) else "") + p
                              for i, p in enumerate(parts[1:]))
    note = ("(the held-out record has a scripted earlier assistant turn, which a terminal chat "
            "cannot replay: its user turns are sent in order, so the model answers both)\n\n"
            if scripted else "")
    shown = " ".join(c if " " not in c else repr(c) for c in cmd)
    return f"#### {cat}\n\n{note}```\n$ {shown}\n{text.strip()}\n```\n"


if __name__ == "__main__":
    for category in CATEGORIES:
        print(transcript(sys.argv[1], sys.argv[2], category))
