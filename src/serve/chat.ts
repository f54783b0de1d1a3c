/**
 * The chat template: how a conversation becomes one prompt for a Sigma model.
 *
 * Sigma's tokenizers have no role tokens (their special tokens are
 * <|endoftext|>, <|pad|>, the domain and the language tags), and adding some
 * would change every model's vocabulary. So the template is plain text that
 * any model can read, one turn per paragraph:
 *
 *   System: You are terse.
 *
 *   User: Hello!
 *
 *   Assistant: Hi.
 *
 *   User: What is 2 + 2?
 *
 *   Assistant:
 *
 * The reply is generated after the final "Assistant:"; it ends at
 * <|endoftext|> or where the model starts the next turn ("\n\nUser:" — the
 * CHAT_STOPS, added to the caller's own stop strings), and its leading space
 * is dropped. A model fine-tuned on this layout answers best; any model
 * continues it. The domain's control token goes first, as for every prompt
 * (src/serve/prompt.ts).
 */
export interface ChatMessage {
  role: "system" | "user" | "assistant";
  content: string;
}

const LABEL: Record<ChatMessage["role"], string> = { system: "System", user: "User", assistant: "Assistant" };

/** Where a reply ends: the model starting another turn. */
export const CHAT_STOPS: readonly string[] = ["\n\nUser:", "\n\nSystem:"];

/** The prompt text for `messages` (oldest first), ending where the assistant's reply begins. */
export function chatPrompt(messages: readonly ChatMessage[]): string {
  return messages.map((m) => `${LABEL[m.role]}: ${m.content.trim()}\n\n`).join("") + `${LABEL.assistant}:`;
}

/**
 * Drops the space the model writes after "Assistant:" from a streamed reply:
 * push(piece) returns the piece without leading whitespace until the first
 * other character has gone out.
 */
export class ReplyTrimmer {
  private started = false;
  push(piece: string): string {
    if (this.started) return piece;
    const t = piece.trimStart();
    if (t.length > 0) this.started = true;
    return t;
  }
}
