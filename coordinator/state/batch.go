package state

import (
	"fmt"

	memdb "github.com/hashicorp/go-memdb"
)

// batch is the write transaction shared by the mutations of one Batch.
type batch struct {
	db *memdb.MemDB
	tx *memdb.Txn
	// ops are the mutations applied so far in tx, for a replay after a
	// rejection.
	ops []batchOp
	// last is the index of the last command of the batch, rejections
	// included.
	last uint64
}

type batchOp struct {
	index uint64
	fn    func(w *wtx) error
}

// Batch runs fn, whose mutations (the store's methods called from fn, on
// the same goroutine) share one memdb write transaction, committed when fn
// returns. Readers see the state before the batch or after all of it,
// never part of it; Changed, DispatchChanged and the Views' watch channels
// fire once. The resulting state, the last applied index and every
// mutation's result are those of the same mutations applied one by one:
// a mutation that fails leaves no trace in the batch but its index, as it
// would alone (see write).
//
// Batch is for the FSM goroutine (raft.BatchingFSM.ApplyBatch): like every
// mutation it must not run concurrently with other mutations.
func (s *Store) Batch(fn func()) {
	if s.batch != nil {
		panic("state: nested Batch")
	}
	db := s.db.Load()
	b := &batch{db: db}
	b.begin()
	s.batch = b
	defer func() { s.batch = nil }()
	fn()
	if b.last == 0 {
		// No mutation ran: nothing to record.
		b.tx.Abort()
		return
	}
	s.commit(b.tx, b.last, true)
}

func (b *batch) begin() {
	b.tx = b.db.Txn(true)
	b.tx.TrackChanges()
}

// apply runs one mutation in the batch's transaction. A failed mutation
// may have written before failing, and memdb has no savepoints: the
// transaction is dropped and the mutations that succeeded before it are
// replayed into a new one. They are deterministic functions of the state
// and their command, so the replay writes what they wrote the first time.
// (Rejections are rare, a batch is at most raft's MaxAppendEntries long.)
func (b *batch) apply(index uint64, fn func(w *wtx) error) error {
	b.last = index
	err := fn(&wtx{tx: b.tx, index: index})
	if err == nil {
		b.ops = append(b.ops, batchOp{index: index, fn: fn})
		return nil
	}
	b.tx.Abort()
	b.begin()
	for _, op := range b.ops {
		if rerr := op.fn(&wtx{tx: b.tx, index: op.index}); rerr != nil {
			panic(fmt.Sprintf("state: replay of command %d failed after succeeding: %v", op.index, rerr))
		}
	}
	return err
}

// commit records index as the last applied one, commits tx and fires the
// signals. changed says whether tx may hold changes besides the index.
func (s *Store) commit(tx *memdb.Txn, index uint64, changed bool) {
	dispatch := changed && affectsDispatch(tx.Changes())
	m := *readMeta(tx)
	m.LastIndex = index
	mustInsert(tx, tableMeta, &m)
	tx.Commit() // closes the memdb watch channels of what changed (Views)
	if dispatch {
		s.dispatch.fire()
	}
	s.changed.fire()
}
