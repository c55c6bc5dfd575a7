"""Draw the demo shop's product pictures: one small SVG tile per catalog product
(web/static/img/<id>.svg), coloured like the product, with a simple outline of its
category and its name. Run again after changing examples/shop/catalog.json."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {
    "beige": "#d8c3a5", "black": "#2b2b2b", "blue": "#3b6fb6", "brown": "#7a4e2d", "burgundy": "#7b1e3a",
    "camel": "#c19a6b", "champagne": "#e8d8b8", "charcoal": "#3f4548", "cognac": "#9a4f22",
    "cream": "#f1e8d2", "ecru": "#e6dcc3", "emerald": "#2e8b62", "green": "#4a8c4a", "grey": "#9a9ea3",
    "indigo": "#34406b", "khaki": "#b5a475", "lime": "#a7c957", "mustard": "#d4a627", "natural": "#e9dfc9",
    "navy": "#24345c", "nude": "#e3c1a8", "oatmeal": "#d9cdb4", "olive": "#6b7240", "oxblood": "#5c1a1b",
    "pink": "#e8a6b8", "red": "#c33b3b", "sage": "#a3b18a", "sand": "#d6c29a", "tan": "#c49a6c",
    "taupe": "#8b7d6b", "terracotta": "#c66b3d", "white": "#f4f4f2", "yellow": "#e9c94a",
}
SHAPES = {  # a simple outline per category, drawn in a 200 x 140 box
    "sneakers": "M30 100 L60 70 L100 75 L130 95 L170 100 L170 115 L30 115 Z",
    "shoes": "M30 105 L70 85 L120 88 L170 105 L170 115 L30 115 Z",
    "boots": "M60 40 L100 40 L100 90 L160 100 L160 115 L60 115 Z",
    "jackets": "M60 30 L140 30 L170 60 L150 70 L150 120 L50 120 L50 70 L30 60 Z",
    "t-shirts": "M60 30 L140 30 L175 55 L155 70 L145 62 L145 120 L55 120 L55 62 L45 70 L25 55 Z",
    "jeans": "M65 25 L135 25 L140 120 L108 120 L100 60 L92 120 L60 120 Z",
    "dresses": "M80 25 L120 25 L118 50 L150 120 L50 120 L82 50 Z",
    "sweaters": "M55 30 L145 30 L175 70 L160 78 L150 60 L150 120 L50 120 L50 60 L40 78 L25 70 Z",
    "accessories": "M60 60 L140 60 L150 115 L50 115 Z M80 60 Q100 25 120 60",
}


def colour(name: str) -> str:
    for word in [name, *name.replace("/", " ").split()]:
        if word in COLOURS:
            return COLOURS[word]
    return "#b9b4ab"


def tile(product: dict[str, object]) -> str:
    fill = colour(str((product.get("colors") or ["grey"])[0]))  # type: ignore[index]
    shape = SHAPES.get(str(product.get("category")), SHAPES["accessories"])
    name = escape(str(product.get("name", "")))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 200 160" role="img" aria-label="{name}">'
            f'<rect width="200" height="160" rx="12" fill="#f3efe8"/>'
            f'<path d="{shape}" fill="{fill}" stroke="#4a4440" stroke-width="2" stroke-linejoin="round"/>'
            f'<text x="100" y="148" font-family="sans-serif" font-size="13" text-anchor="middle" '
            f'fill="#3a3530">{name}</text></svg>\n')


def main() -> None:
    catalog = json.loads((ROOT / "examples" / "shop" / "catalog.json").read_text())
    out = ROOT / "web" / "static" / "img"
    out.mkdir(parents=True, exist_ok=True)
    for product in catalog:
        image = str(product.get("image", ""))
        if image.startswith("/static/img/"):
            (out / image.rsplit("/", 1)[1]).write_text(tile(product))
    print(f"{len(catalog)} product images in {out}")


if __name__ == "__main__":
    main()
