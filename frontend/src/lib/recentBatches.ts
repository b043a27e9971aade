/** Batches created from this browser (the API has no batch list endpoint). */
const KEY = 'crucible.batches';

export interface RecentBatch {
  id: string;
  count: number;
  created_at: string;
  name?: string;
}

export function recentBatches(): RecentBatch[] {
  try {
    const v = JSON.parse(localStorage.getItem(KEY) ?? '[]');
    return Array.isArray(v) ? v : [];
  } catch {
    return [];
  }
}

export function rememberBatch(b: RecentBatch) {
  try {
    const list = [b, ...recentBatches().filter((x) => x.id !== b.id)].slice(0, 20);
    localStorage.setItem(KEY, JSON.stringify(list));
  } catch {
    /* ignore */
  }
}
