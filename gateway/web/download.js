// "Download results (JSON)": what the page shows, with the query that produced it.

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "").slice(0, 60) || "results";
}

/** Saves ``body`` as ``mediasearch-<name>.json`` through a temporary blob link. */
export function downloadJson(name, body) {
  const blob = new Blob([`${JSON.stringify(body, null, 2)}\n`], { type: "application/json" });
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = `mediasearch-${slug(name)}.json`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 30_000);
}
