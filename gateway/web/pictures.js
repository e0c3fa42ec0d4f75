// Pictures to search with: dropped anywhere on the page, pasted, or a result's own picture.

import { originalUrl } from "./api.js";

function hasFiles(event) {
  return Boolean(event.dataTransfer) && [...event.dataTransfer.types].includes("Files");
}

function firstPicture(files) {
  const list = [...(files || [])];
  return list.find((f) => f.type.startsWith("image/")) || list[0];
}

/** Calls ``onPicture(file)`` for a file dropped anywhere or pasted; ``overlay`` shows while dragging. */
export function listenForPictures(overlay, onPicture) {
  let depth = 0; // dragenter/dragleave pair up per element crossed
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", (event) => {
    if (!hasFiles(event)) return;
    depth = Math.max(0, depth - 1);
    if (depth === 0) overlay.hidden = true;
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    overlay.hidden = true;
    onPicture(firstPicture(event.dataTransfer.files));
  });
  window.addEventListener("paste", (event) => {
    const picture = [...((event.clipboardData && event.clipboardData.files) || [])].find((f) =>
      f.type.startsWith("image/"),
    );
    if (!picture) return; // text goes where it was pasted
    event.preventDefault();
    onPicture(picture);
  });
}

/**
 * A result's picture as a File: the original when it is served from here; a presigned S3
 * redirect is another origin (connect-src 'self'), and then the thumbnail stands in for it.
 * Null when neither can be fetched.
 */
export async function fetchPicture(result) {
  for (const url of [originalUrl(result), result.thumbnailUrl]) {
    try {
      const response = await fetch(url);
      if (!response.ok) continue;
      const blob = await response.blob();
      const name = result.key.split("/").pop() || `image-${result.id}`;
      return new File([blob], name, { type: blob.type || result.contentType || "image/jpeg" });
    } catch {
      // try the next
    }
  }
  return null;
}
