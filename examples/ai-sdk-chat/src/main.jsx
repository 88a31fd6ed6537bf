// A useChat page talking to ssegate directly (docs/ai-sdk.md). It resumes a running answer
// after a reload (resume: true), and its Stop button stops the generation upstream.
//
// ?gateway=http://127.0.0.1:8000 says where ssegate is (it must allow this page's origin:
// --cors-origin). The chat id is kept in the URL, the finished messages in localStorage.
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { useEffect, useMemo, useState } from 'react';
import { createRoot } from 'react-dom/client';

const params = new URLSearchParams(location.search);
const api = `${params.get('gateway') ?? 'http://127.0.0.1:8000'}/v1/ui/chat`;

function chatIdFromUrl() {
  let id = params.get('chat');
  if (!id) {
    id = crypto.randomUUID();
    params.set('chat', id);
    history.replaceState(null, '', `?${params}`); // a reload keeps the chat
  }
  return id;
}

const saved = (id) => JSON.parse(localStorage.getItem(`chat:${id}`) ?? '[]');

function Chat({ id }) {
  const transport = useMemo(() => new DefaultChatTransport({ api }), []);
  const initial = useMemo(() => saved(id), [id]);
  const { messages, sendMessage, status, stop, error } = useChat({
    id,
    messages: initial,
    resume: true, // on load: GET {api}/{id}/stream replays a running answer (204: none)
    transport,
  });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';

  // Keep what is settled: an answer still streaming is left out, the resume brings it back.
  useEffect(() => {
    const last = messages.at(-1);
    const settled = busy && last?.role === 'assistant' ? messages.slice(0, -1) : messages;
    localStorage.setItem(`chat:${id}`, JSON.stringify(settled));
  }, [id, messages, busy]);

  // stop() only drops this page's connection (as a reload does); DELETE stops the generation.
  const onStop = () => {
    void fetch(`${api}/${encodeURIComponent(id)}/stream`, { method: 'DELETE' });
    void stop();
  };

  return (
    <main>
      <h1>useChat → ssegate</h1>
      <ul id="messages">
        {messages.map((m) => (
          <li key={m.id} className={`msg ${m.role}`} data-id={m.id}>
            {m.parts.map((part, i) =>
              part.type === 'text' ? <span key={i} className="text">{part.text}</span>
              : part.type === 'reasoning' ? <em key={i} className="reasoning">{part.text}</em>
              : null,
            )}
          </li>
        ))}
      </ul>
      {error && <p id="error">{error.message}</p>}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          if (!input.trim() || busy) return;
          void sendMessage({ text: input });
          setInput('');
        }}
      >
        <input id="input" value={input} onChange={(e) => setInput(e.target.value)} placeholder="Ask…" />
        {busy ? <button id="stop" type="button" onClick={onStop}>Stop</button> : <button id="send">Send</button>}
      </form>
      <p id="status" data-status={status}>{status}</p>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<Chat id={chatIdFromUrl()} />);
