"""Safety: the moderator (a classifier that flags harmful requests, in OpenAI's moderation
shape) and the red team that attacks a model with jailbreak wrappers.

  moderator  the classifier, its feature views, `Moderator.load(dir).moderate(texts)`
  examples   its training data: miniworld turns, attack phrasings, moderation formats
  training   `ModeratorConfig`, `train_moderator`, held-out metrics
  attacks    jailbreak transforms, `build_cases`, `training_attack_records`
  redteam    `run_redteam`: attack a checkpoint or a server, judge, write the report

The moderator's public names are re-exported here (`from gptlab.safety import Moderator`);
the red team is imported from its module, so that loading the moderator stays light.
"""
from gptlab.safety.examples import (
    Example, augmented_examples, load_examples, row_example, world_examples)
from gptlab.safety.moderator import (
    CATEGORIES, CATEGORY_ALIASES, FALSE_LABELS, HEADS, OPENAI_DERIVED, REFUSAL,
    SELF_HARM_RESOURCES, TEXT_KEYS, TRUE_LABELS, WORLD_CATEGORY, HashedClassifier,
    HiddenEncoder, Moderator, canonical, feature_ids, normalize, refusal_for, resolve_encoder,
    views)
from gptlab.safety.training import (
    ModeratorConfig, cap_negatives, evaluate_world, fit, fit_probe, format_eval, prf,
    print_moderation, train_moderator)

__all__ = [
    "CATEGORIES", "CATEGORY_ALIASES", "FALSE_LABELS", "HEADS", "OPENAI_DERIVED", "REFUSAL",
    "SELF_HARM_RESOURCES", "TEXT_KEYS", "TRUE_LABELS", "WORLD_CATEGORY", "HashedClassifier",
    "HiddenEncoder", "Moderator", "canonical", "feature_ids", "normalize", "refusal_for",
    "resolve_encoder", "views", "Example", "augmented_examples", "load_examples", "row_example",
    "world_examples", "ModeratorConfig", "cap_negatives", "evaluate_world", "fit", "fit_probe",
    "format_eval", "prf", "print_moderation", "train_moderator"]
