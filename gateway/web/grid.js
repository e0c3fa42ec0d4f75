// The results grid: one button per result (thumbnail, score, key), a roving tabindex so Tab enters
// the grid once and the arrow keys, Home and End move between cards.

const PLACEHOLDER_SIZE = 256; // the indexer's thumbnails are at most 256 px

export function describe(result) {
  const tags = result.tags && result.tags.length ? ` (tags: ${result.tags.join(", ")})` : "";
  return `${result.key}${tags}`;
}

export function formatScore(score) {
  return Number(score || 0).toFixed(3);
}

function thumbnailSize(result) {
  const w = Number(result.width) || PLACEHOLDER_SIZE;
  const h = Number(result.height) || PLACEHOLDER_SIZE;
  const scale = PLACEHOLDER_SIZE / Math.max(w, h);
  return [Math.max(1, Math.round(w * Math.min(1, scale))), Math.max(1, Math.round(h * Math.min(1, scale)))];
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export class Grid {
  /** ``list``: the <ul>; ``onOpen(index)``: a card was clicked or Enter was pressed on it. */
  constructor(list, onOpen) {
    this.list = list;
    this.onOpen = onOpen;
    this.cards = [];
    list.addEventListener("keydown", (event) => this.keydown(event));
    list.addEventListener("focusin", (event) => {
      const index = this.cards.indexOf(event.target);
      if (index >= 0) this.rove(index, false);
    });
  }

  clear() {
    this.list.replaceChildren();
    this.cards = [];
  }

  /** Adds one card per result (the caller has dropped ids already shown). */
  append(results) {
    const fragment = document.createDocumentFragment();
    for (const result of results) {
      const index = this.cards.length;
      const item = el("li", "cell");
      const card = el("button", "card");
      card.type = "button";
      card.tabIndex = index === 0 ? 0 : -1;
      card.dataset.id = result.id;
      card.dataset.key = result.key;
      card.dataset.score = String(result.score);
      card.dataset.index = String(index);
      card.setAttribute("aria-label", `${result.key}, score ${formatScore(result.score)}`);
      const frame = el("span", "thumb");
      const img = document.createElement("img");
      const [w, h] = thumbnailSize(result);
      img.width = w;
      img.height = h;
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = describe(result);
      img.addEventListener("error", () => frame.classList.add("broken"), { once: true });
      img.src = result.thumbnailUrl;
      frame.append(img);
      const score = el("span", "score", formatScore(result.score));
      score.title = "cosine similarity to the query";
      const key = el("span", "key", result.key);
      key.title = result.key;
      card.append(frame, score, key);
      card.addEventListener("click", () => this.onOpen(index));
      item.append(card);
      fragment.append(item);
      this.cards.push(card);
    }
    this.list.append(fragment);
  }

  columns() {
    const template = getComputedStyle(this.list).gridTemplateColumns;
    return Math.max(1, template.split(" ").filter(Boolean).length);
  }

  /** Makes card ``index`` the one Tab reaches; ``focus``: move the focus there too. */
  rove(index, focus = true) {
    if (!this.cards.length) return;
    const target = Math.max(0, Math.min(this.cards.length - 1, index));
    for (const card of this.cards) card.tabIndex = -1;
    const card = this.cards[target];
    card.tabIndex = 0;
    if (focus) {
      card.focus();
      card.scrollIntoView({ block: "nearest" });
    }
  }

  focusCard(index) {
    this.rove(index, true);
  }

  keydown(event) {
    const index = this.cards.indexOf(event.target);
    if (index < 0 || event.altKey || event.ctrlKey || event.metaKey) return;
    const moves = {
      ArrowRight: index + 1,
      ArrowLeft: index - 1,
      ArrowDown: index + this.columns(),
      ArrowUp: index - this.columns(),
      Home: 0,
      End: this.cards.length - 1,
    };
    if (!(event.key in moves)) return;
    event.preventDefault();
    const next = moves[event.key];
    if (next < 0 || next >= this.cards.length) {
      if (event.key === "ArrowDown" && index < this.cards.length - 1) this.rove(this.cards.length - 1);
      return;
    }
    this.rove(next);
  }
}
