/**
 * Errors Sigma raises on bad input. Each carries a hint saying what to do,
 * printed by the CLI after the message.
 */
export class SigmaError extends Error {
  readonly hint: string | undefined;
  constructor(message: string, hint?: string) {
    super(hint ? `${message}\n  hint: ${hint}` : message);
    this.name = "SigmaError";
    this.hint = hint;
  }
}

/** Throws a SigmaError when `cond` is false. */
export function check(cond: unknown, message: string | (() => string), hint?: string): asserts cond {
  if (!cond) throw new SigmaError(typeof message === "function" ? message() : message, hint);
}
