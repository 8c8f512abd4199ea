"""Copy a trained judge directory into the package as a shipped judge, with its provenance.

    .venv/bin/python scripts/package_judge.py runs/judges/selfj-smollm2-135m selfj-smollm2-135m \
        --labels_summary runs/labels_smollm2/labels_within_ref.summary.json --command "..." --wall_time "..."
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from selfj_rlhf.io import atomic_write_json, atomic_write_text
from selfj_rlhf.models import EMBEDDED_MODELS
from selfj_rlhf.shipped import JUDGES_DIR, SHIPPED_JUDGES

HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
FILES = ("adapter_model.safetensors", "adapter_config.json", "selfj_config.json")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("judge_dir")
    parser.add_argument("alias", choices=sorted(SHIPPED_JUDGES))
    parser.add_argument("--labels_summary", required=True)
    parser.add_argument("--command", action="append", default=[], help="Commands that produced it, in order.")
    parser.add_argument("--wall_time", default="", help="How long labelling and training took.")
    args = parser.parse_args()

    source = Path(args.judge_dir)
    target = JUDGES_DIR / SHIPPED_JUDGES[args.alias][0]
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy2(source / name, target / name)
    config = json.loads((target / "selfj_config.json").read_text())
    adapter = json.loads((target / "adapter_config.json").read_text())
    # the local conversion cache path means nothing elsewhere; name the public checkpoint instead
    adapter["base_model_name_or_path"] = HUB_IDS.get(config["base_model"], config["base_model"])
    atomic_write_json(target / "adapter_config.json", adapter)
    config["training"]["labels"] = Path(config["training"]["labels"]).name
    atomic_write_json(target / "selfj_config.json", config)
    labels = json.loads(Path(args.labels_summary).read_text())
    label_cfg = labels["config"]
    lines = [
        f"# {args.alias}: provenance", "",
        f"A SELF-J judge for `{config['base_model']}` ({EMBEDDED_MODELS[config['base_model']].description}): a LoRA "
        f"adapter trained by self-distillation on the model's own answers, labelled without human or GPT-4 scores.", "",
        "## Data", "",
        *[f"- `{path}`" for path in label_cfg["data"]],
        f"- {labels['instructions']} instructions (round-robin over categories, references of at least "
        f"{label_cfg['min_reference_chars']} characters), {label_cfg['k']} sampled answers each "
        f"(temperature {label_cfg['temperature']}, {label_cfg['max_new_tokens']} new tokens): {labels['responses']} "
        "labelled responses.", "",
        "## Labels", "",
        f"combine `{label_cfg['combine']}`, normalize `{label_cfg['normalize']}`, weights self-eval "
        f"{label_cfg['selfeval_weight']} / MiniLM cosine {label_cfg['similarity_weight']} / token F1 "
        f"{label_cfg['overlap_weight']}, reference_as_response `{label_cfg['reference_as_response']}`, "
        f"offtopic_as_response `{label_cfg.get('offtopic_as_response', False)}`; "
        f"class histogram 0-9: {labels['label_histogram']}.", "",
        "## Training", "", "```json", json.dumps(config["training"], indent=2), "```", "",
        "## Command", "", "```bash", *args.command, "```", "",
        f"Wall time on the project's 2-core CPU machine: {args.wall_time}.", "",
        "Evaluation: `evals/results/judge_correlation.md` and `evals/results/bestofn_check.md`.", ""]
    atomic_write_text(target / "PROVENANCE.md", "\n".join(lines))
    print(f"packaged {source} as {args.alias} in {target}")


if __name__ == "__main__":
    main()
