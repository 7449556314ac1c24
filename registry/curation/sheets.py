"""Match sheets: a decision drawn for a reviewer — the query photo beside each top candidate's best photo, the
LightGlue correspondences between them as lines, and every matcher's score written underneath."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from registry.matching.local_matcher import verified_mask
from registry.services.registry import Registry
from registry.store.tables import Decision

PANEL = (480, 320)  # each photo is fitted into this box
HEADER = 40
CAPTION = 36


def _fit(image: Image.Image) -> tuple[Image.Image, float, tuple[int, int]]:
    scale = min(PANEL[0] / image.width, PANEL[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    offset = ((PANEL[0] - size[0]) // 2, (PANEL[1] - size[1]) // 2)
    return image.resize(size, Image.Resampling.BILINEAR), scale, offset


def _colour(confidence: float) -> tuple[int, int, int]:
    """Confident correspondences green, doubtful ones red."""
    c = max(0.0, min(1.0, confidence))
    return int(255 * (1 - c)), int(200 * c + 40), 60


def correspondences(registry: Registry, query_id: int, candidate_id: int) -> dict[str, Any]:
    """The correspondences the local score counted between two annotations, for the browser to draw. Each pair
    is (query x, query y, candidate x, candidate y, confidence, verified 0/1: consistent with one epipolar
    geometry); coordinates are fractions of the photo as the matcher saw it (the animal's crop, turned by the
    species' orientation rule), the frame the workspace shows photos in."""
    problems: list[str] = []
    # cached features, described again only where the cache lost them (as identification reads candidates)
    found = registry.identification.candidate_features([query_id, candidate_id], problems)
    missing = [a for a in (query_id, candidate_id) if a not in found]
    if missing:
        raise ValueError(problems[0] if problems else f"no annotation {missing[0]}")
    query, candidate = found[query_id], found[candidate_id]
    matches = registry.pipeline.local.correspondences(query, [candidate])[0]
    verified = verified_mask(query, candidate, matches)
    qw, qh = query.image_size
    cw, ch = candidate.image_size
    pairs = [[round(float(query.keypoints[qi][0]) / qw, 4), round(float(query.keypoints[qi][1]) / qh, 4),
              round(float(candidate.keypoints[ci][0]) / cw, 4), round(float(candidate.keypoints[ci][1]) / ch, 4),
              round(float(confidence), 3), int(ok)]
             for qi, ci, confidence, ok in zip(matches.query_idx, matches.candidate_idx, matches.confidence,
                                               verified, strict=True)]
    return {"query": query_id, "candidate": candidate_id, "matcher": registry.pipeline.local.version,
            "count": len(pairs), "verified": int(verified.sum()), "pairs": pairs}


def render(registry: Registry, decision_id: int, out: Path, candidates: int = 3) -> dict[str, Any]:
    """Draw the decision's query and its top `candidates` individuals into a PNG at `out`."""
    with registry.catalog.transaction() as session:
        decision = session.get(Decision, decision_id)
        if decision is None:
            raise ValueError(f"no decision {decision_id}")
        ranked = (decision.candidates or [])[:candidates]
        best = {id(c): c.get("best_annotation_id", c.get("best_image_id")) for c in ranked}
        query_id, score, outcome, threshold = decision.annotation_id, decision.score, decision.outcome, \
            decision.threshold
    states = registry.catalog.annotation_states([query_id, *best.values()])
    query_info = states[query_id]
    header = (f"decision {decision_id}: {outcome}"
              f"{' ' + ranked[0]['code'] if outcome == 'match' and ranked else ''}  "
              f"score {score if score is None else round(score, 3)}  "
              f"threshold {threshold:g}   query {Path(query_info['path']).name}")
    rows = [(c, states[best[id(c)]]) for c in ranked if best[id(c)] in states]
    pipeline = registry.pipeline
    features = {info["feature_key"]: registry.features.get(info["feature_key"])
                for info in [query_info, *(info for _, info in rows)]}

    def photo(info: dict[str, Any]) -> tuple[Image.Image, float, tuple[int, int], float]:
        image = pipeline.load(Path(info["path"]), info["species"], info["viewpoint"], info["box"])
        feats = features.get(info["feature_key"])
        frame = feats.image_size[0] / image.width if feats is not None else 1.0  # keypoint frame -> photo
        fitted, scale, offset = _fit(image)
        return fitted, scale, offset, frame

    font = ImageFont.load_default()
    sheet = Image.new("RGB", (2 * PANEL[0], HEADER + len(rows) * (PANEL[1] + CAPTION)), (250, 250, 248))
    draw = ImageDraw.Draw(sheet)
    draw.text((10, 12), header, fill=(0, 0, 0), font=font)
    q_image, q_scale, q_offset, q_frame = photo(query_info)
    lines = 0
    for index, (candidate, info) in enumerate(rows):
        top = HEADER + index * (PANEL[1] + CAPTION)
        sheet.paste(q_image, (q_offset[0], top + q_offset[1]))
        c_image, c_scale, c_offset, c_frame = photo(info)
        sheet.paste(c_image, (PANEL[0] + c_offset[0], top + c_offset[1]))
        q_features, c_features = features.get(query_info["feature_key"]), features.get(info["feature_key"])
        if q_features is not None and c_features is not None:
            matches = pipeline.local.correspondences(q_features, [c_features])[0]  # the ones the score counted
            for qi, ci, confidence in zip(matches.query_idx, matches.candidate_idx, matches.confidence, strict=True):
                qx, qy = q_features.keypoints[qi] / q_frame * q_scale
                cx, cy = c_features.keypoints[ci] / c_frame * c_scale
                draw.line([(q_offset[0] + qx, top + q_offset[1] + qy),
                           (PANEL[0] + c_offset[0] + cx, top + c_offset[1] + cy)], fill=_colour(float(confidence)),
                          width=1)
                lines += 1
        scores = candidate["images"][0] if candidate.get("images") else {"raw": {}, "calibrated": {}}
        parts = [f"{name} {raw:.3g}" + (f" -> {scores['calibrated'][name]:.2f}" if name in scores["calibrated"] else "")
                 for name, raw in scores["raw"].items()]
        draw.text((10, top + PANEL[1] + 4), f"#{index + 1} {candidate['code']}  fused {candidate['score']:.3f}",
                  fill=(0, 0, 0), font=font)
        draw.text((10, top + PANEL[1] + 18), "   ".join(parts) + f"   ({Path(info['path']).name})",
                  fill=(60, 60, 60), font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return {"out": str(out), "size": list(sheet.size), "candidates": len(rows), "correspondences_drawn": lines}
