/** Number formats the commands share. */

/** "1.23M" style parameter counts. */
export const millions = (n: number): string => `${(n / 1e6).toFixed(n < 1e6 ? 3 : 2)}M`;
