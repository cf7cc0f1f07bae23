/** Server-sent events: parsing a `text/event-stream` body. */

/** One event of a stream: its name (`message` when unnamed), its data (decoded JSON when it is JSON), its id. */
export interface ServerSentEvent {
  event: string;
  data: unknown;
  id: string | null;
}

/**
 * Splits a stream of text chunks into events. Comment lines (keep-alives) are skipped; a
 * line may be split across chunks, and `\r\n`, `\r` or `\n` end it.
 */
export class SseParser {
  private buffer = "";
  private event = "message";
  private data: string[] = [];
  private id: string | null = null;

  /** Feeds one chunk; answers the events it completed. */
  push(chunk: string): ServerSentEvent[] {
    this.buffer += chunk;
    const out: ServerSentEvent[] = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (match === null) break;
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event !== null) out.push(event);
    }
    return out;
  }

  private line(line: string): ServerSentEvent | null {
    if (line === "") {
      if (this.data.length === 0) {
        this.event = "message";
        return null;
      }
      const text = this.data.join("\n");
      let data: unknown = text;
      try {
        data = JSON.parse(text);
      } catch {
        // Not JSON: the text itself.
      }
      const event = { event: this.event, data, id: this.id };
      this.event = "message";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "event") this.event = value;
    else if (name === "data") this.data.push(value);
    else if (name === "id") this.id = value;
    return null;
  }
}
